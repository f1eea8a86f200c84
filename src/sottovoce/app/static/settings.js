// Settings: who may find this account (`account discovery`), read receipts, typing
// notices and presence (`account settings`), and the page's theme.
import { $, h } from "./dom.js";
import { fillPanel, openPanel, panelError, panelOpen } from "./panel.js";

const TITLE = "Settings";

export function applyTheme(theme) {
  if (theme === "light" || theme === "dark") {
    document.documentElement.setAttribute("data-theme", theme);
  } else {
    document.documentElement.removeAttribute("data-theme");
  }
}

export function openSettings(rpc, from) {
  openPanel(TITLE, [h("p", { class: "meta" }, "Loading…")], from);
  rpc.call("settings").then((s) => draw(rpc, s), (e) => panelError(e.message));
}

function radios(rpc, key, legend, current, options, note) {
  const name = `setting-${key}`;
  const box = h("fieldset", { id: name }, h("legend", {}, legend));
  for (const [value, label] of options) {
    const input = h("input", { type: "radio", id: `${name}-${value}`, value });
    input.name = name;
    input.checked = current === value;
    input.addEventListener("change", () => { if (input.checked) change(rpc, key, value); });
    box.append(h("div", {}, input, h("label", { for: `${name}-${value}` }, label)));
  }
  if (note) box.append(h("p", { class: "meta" }, note));
  return box;
}

function toggle(rpc, key, label, on, note) {
  const id = `setting-${key}`;
  const input = h("input", { type: "checkbox", id });
  input.checked = on;
  input.addEventListener("change", () => change(rpc, key, input.checked));
  return h("div", { class: "check" }, input, h("label", { for: id }, label),
    h("p", { class: "meta" }, note));
}

function change(rpc, key, value) {
  const focused = document.activeElement && document.activeElement.id;
  panelError("");
  rpc.call("settings_set", { key, value }).then((s) => {
    draw(rpc, s);
    if (focused && $(focused)) $(focused).focus();
  }, (e) => {
    panelError(e.message);
    rpc.call("settings").then((s) => draw(rpc, s), () => {});
  });
}

function draw(rpc, s) {
  applyTheme(s.theme);
  if (!panelOpen(TITLE)) return;
  fillPanel([
    radios(rpc, "discovery", "Who may find this account", s.discovery, [
      ["public", "public: anyone, by the start of its name"],
      ["default", "default: only someone who knows the exact name"],
      ["strict", "strict: nobody but your contacts (a friend verification code)"]],
    s.discovery === null ? "Not connected: the mode the server holds is unknown now." : null),
    toggle(rpc, "readReceipts", "Read receipts", s.readReceipts,
      "Off: this device sends none and shows nobody's (delivered ✓✓ still shows)."),
    toggle(rpc, "typing", "Typing notices", s.typing,
      "Off: this device sends none and shows nobody's."),
    toggle(rpc, "presence", "Presence", s.presence,
      "Off: no contact is told whether you are online, away or offline; nobody's is shown."),
    radios(rpc, "theme", "Theme", s.theme, [
      ["system", "as the system prefers"], ["light", "light"], ["dark", "dark"]]),
  ]);
}

// The account's devices (`sottovoce device list|rename|revoke|link`): each with its name,
// id, dates and key fingerprint; rename; revoke after a confirm step; link a new one with
// the QR code, the short code and the words both screens must show.
import { $, h } from "./dom.js";
import { fillPanel, openPanel, panelError, panelOpen } from "./panel.js";
import { qrSvg } from "./qr.js";

const TITLE = "Devices";
let rpc = null;
let linking = null;  // the linking shown: its codes, then the words to confirm, then the end

function when(ms) {
  return ms ? new Date(ms).toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : "—";
}

export function openDevices(theRpc, from) {
  rpc = theRpc;
  openPanel(TITLE, [h("p", { class: "meta" }, "Loading the devices…")], from);
  // A linking under way (this page or one before it) is shown again, words and all.
  rpc.call("link_state").then((now) => {
    if (!now) {
      if (linking && linking.stage !== "done" && linking.stage !== "failed") linking = null;
    } else if (!linking || linking.invite.code !== now.invite.code || now.hello) {
      linking = now.hello ? { invite: now.invite, stage: "confirm", hello: now.hello }
        : { invite: now.invite, stage: "invite" };
    }
  }, () => {}).finally(refresh);
}

function refresh() {
  rpc.call("devices").then(draw, (e) => panelError(e.message));
}

function draw(devices) {
  if (!panelOpen(TITLE)) return;
  const items = devices.map((d) => deviceItem(d));
  fillPanel([
    h("ul", { id: "device-list", class: "devices", "aria-label": "Devices of this account" },
      ...items),
    linkSection(),
  ]);
}

function deviceItem(d) {
  const label = d.name || "(no name)";
  const rename = h("form", { class: "row", autocomplete: "off" },
    h("label", { for: `rename-${d.id}`, class: "sr-only" }, `New name for ${label}`),
    h("input", { id: `rename-${d.id}`, value: d.name, autocomplete: "off" }),
    h("button", { type: "submit", "aria-label": `Rename ${label}` }, "Rename"));
  rename.addEventListener("submit", (e) => {
    e.preventDefault();
    const name = rename.querySelector("input").value.trim();
    if (!name) { panelError("a device name cannot be empty"); return; }
    rpc.call("device_rename", { device: d.id, name }).then(draw, (err) => panelError(err.message));
  });
  const li = h("li", { class: "device" },
    h("h3", {}, label, d.current ? h("span", { class: "badge" }, "this device") : null),
    h("dl", {},
      h("dt", {}, "id"), h("dd", { class: "mono" }, d.id),
      h("dt", {}, "created"), h("dd", {}, when(d.createdMs)),
      h("dt", {}, "last active"), h("dd", {}, d.current ? "now" : when(d.lastActiveMs)),
      h("dt", {}, "key fingerprint"), h("dd", { class: "mono" }, d.fingerprint)),
    rename);
  if (!d.current) li.append(revokeControls(d, label));
  return li;
}

function revokeControls(d, label) {
  const box = h("div", { class: "row" });
  const ask = h("button", { type: "button", class: "danger", "aria-label": `Revoke ${label}` },
    "Revoke…");
  ask.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "danger",
      "aria-label": `Yes, revoke ${label}` }, "Yes, revoke it");
    const no = h("button", { type: "button" }, "Cancel");
    const warn = h("p", { role: "alert" }, `Revoke ${label} (${d.id})? It can no longer read ` +
      "or send anything for this account; the account key is replaced, and your contacts " +
      "see that your safety number changed.");
    yes.addEventListener("click", () => {
      yes.disabled = true;
      rpc.call("device_revoke", { device: d.id, confirmed: true }).then(draw, (e) => {
        yes.disabled = false;
        panelError(e.message);
      });
    });
    no.addEventListener("click", () => { box.replaceChildren(ask); ask.focus(); });
    box.replaceChildren(warn, yes, no);
    no.focus();
  });
  box.append(ask);
  return box;
}

function linkSection() {
  const section = h("section", { id: "link-box", class: "link-box", "aria-label": "Link a new device" },
    h("h3", {}, "Link a new device"));
  if (!linking) {
    const form = h("form", { class: "row", autocomplete: "off" },
      h("label", { for: "link-hint", class: "sr-only" }, "Name for the new device (if it gives none)"),
      h("input", { id: "link-hint", autocomplete: "off", placeholder: "name hint (optional)" }),
      h("button", { type: "submit", id: "link-start" }, "Link a new device"));
    const history = h("label", { class: "check" }, h("input", { type: "checkbox", id: "link-history" }),
      " also hand over the message history");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const nameHint = $("link-hint").value.trim();
      const withHistory = $("link-history").checked;
      panelError("");
      rpc.call("link_start", { nameHint, withHistory }).then((invite) => {
        linking = { invite, stage: "invite" };
        refreshLink();
        $("link-warning").focus();
      }, (err) => panelError(err.message));
    });
    section.append(form, history);
    return section;
  }
  const inv = linking.invite;
  section.append(
    h("p", { id: "link-warning", class: "warning", role: "alert", tabindex: "-1" }, inv.warning),
    qrSvg(inv.qr, "QR code for linking the new device"),
    h("p", {}, "Short code: ", h("strong", { id: "link-code", class: "mono" }, inv.code)),
    h("p", { class: "meta" }, "Linking text: ", h("span", { class: "mono wrap" }, inv.text)),
    h("p", { class: "meta" }, `On the new device run: sottovoce account link --server ` +
      `${inv.server} --code '${inv.code}' (or scan the QR code). Good once, until ` +
      `${new Date(inv.expiresAtMs).toLocaleTimeString()}.`));
  if (linking.stage === "confirm") {
    const yes = h("button", { type: "button", id: "link-yes" }, "Yes: the words match, it is mine");
    const no = h("button", { type: "button", class: "danger", id: "link-no" }, "No");
    yes.addEventListener("click", () => answerLink(true));
    no.addEventListener("click", () => answerLink(false));
    section.append(h("div", { role: "alert" },
      h("p", {}, `The new device '${linking.hello.name}' (${linking.hello.device}) shows:`),
      h("p", { id: "link-words", class: "words" }, linking.hello.words.join(" ")),
      h("p", {}, "Do both screens show these words, and is it your device?")), yes, no);
  } else if (linking.stage === "done" || linking.stage === "failed") {
    const again = h("button", { type: "button", id: "link-again" }, "Link another device");
    again.addEventListener("click", () => {
      linking = null;
      refreshLink();
      $("link-start").focus();
    });
    section.append(h("p", { id: "link-result", role: "status",
      class: linking.stage === "done" ? "ok" : "error" }, linking.result), again);
  } else {
    const cancel = h("button", { type: "button", id: "link-cancel" }, "Cancel linking");
    cancel.addEventListener("click", () => rpc.call("link_cancel").catch(() => {}));
    section.append(h("p", { class: "meta", role: "status" }, "Waiting for the new device…"),
      cancel);
  }
  return section;
}

function refreshLink() {
  const old = $("link-box");
  if (old) old.replaceWith(linkSection());
}

function answerLink(accept) {
  rpc.call("link_confirm", { accept }).catch((e) => panelError(e.message));
  linking.stage = "answered";
  refreshLink();
}

// `link` notices: the new device's words to confirm, then done or failed.
export function linkNotice(n) {
  if (!linking) return;
  if (n.stage === "confirm") {
    linking.stage = "confirm";
    linking.hello = n;
  } else if (n.stage === "done") {
    linking.stage = "done";
    linking.result = `Linked '${n.name}' (${n.device}); added to ${n.roomsAdded} room(s).`;
  } else if (n.stage === "failed") {
    linking.stage = "failed";
    linking.result = n.error;
  }
  if (!panelOpen(TITLE)) return;
  refreshLink();
  if (n.stage === "confirm") $("link-yes").focus();
  if (n.stage === "done") refresh();
}

// The account views' entry points: Settings, Devices and Key transparency under the
// conversation list; Safety number (a person) or Audit trail (a room) in a chat's head.
// Built after the list is drawn: nothing here is in the way of the first paint.
import { $, h, show } from "./dom.js";
import { openAudit } from "./audit.js";
import { linkNotice, openDevices } from "./devices.js";
import { openKt } from "./kt.js";
import { dismissPanel } from "./panel.js";
import { applyTheme, openSettings } from "./settings.js";
import { initDrop } from "./drop.js";
import { openVerify } from "./verify.js";

let ctx = null;
let built = false;

function button(id, label, run) {
  const b = h("button", { type: "button", id }, label);
  b.addEventListener("click", () => run(b));
  return b;
}

// Once unlocked and the list is drawn: the buttons, the theme, drag and drop.
// `rpc`: the page's socket; `current()`: the chat shown ({peer, room, label}) or null.
export function accountReady(rpc, current) {
  if (built) return;
  built = true;
  ctx = { rpc, current };
  $("list-pane").append(h("nav", { class: "account-nav", "aria-label": "Account" },
    button("open-settings", "Settings", (b) => openSettings(rpc, b)),
    button("open-devices", "Devices", (b) => openDevices(rpc, b)),
    button("open-kt", "Key transparency", (b) => openKt(rpc, b))));
  const safety = button("open-safety", "Safety number", (b) => {
    const c = current();
    if (c && !c.room) openVerify(rpc, c.peer, b);
  });
  const audit = button("open-audit", "Audit trail", (b) => {
    const c = current();
    if (c && c.room) openAudit(rpc, c.peer, c.label, b);
  });
  $("chat-title").after(safety, audit);
  chatOpened();
  initDrop(current);
  rpc.call("settings_theme").then(applyTheme, () => {});
}

// A chat or room was opened: the pane goes, the head's buttons fit what it is.
export function chatOpened() {
  dismissPanel();
  const c = ctx && ctx.current();
  if (!$("open-safety")) return;
  show($("open-safety"), Boolean(c && !c.room));
  show($("open-audit"), Boolean(c && c.room));
}

export function accountNotice(n) {
  if (n.event === "link") linkNotice(n);
}

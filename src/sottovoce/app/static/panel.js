// The account views' pane: it takes the chat's place (the whole screen at a phone's
// width), has a heading that takes focus, a Back button, and Escape closes it.
import { $, h, reconcile, show } from "./dom.js";

let pane = null;
let back = null;
let chatShown = false;

function build() {
  const title = h("h2", { id: "panel-title", tabindex: "-1" });
  const close = h("button", { type: "button", id: "panel-close",
    "aria-label": "Close this view" }, "← Back");
  close.addEventListener("click", closePanel);
  const body = h("div", { id: "panel-body", class: "panel-body" });
  const error = h("p", { id: "panel-error", class: "error", role: "alert" });
  pane = h("section", { id: "panel", class: "pane panel-pane" },
    h("div", { class: "chat-head" }, close, title), error, body);
  pane.setAttribute("aria-labelledby", "panel-title");
  pane.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.preventDefault(); closePanel(); }
  });
  show(pane, false);
  $("app-view").append(pane);
}

// Open the pane titled `title` with `nodes`; `from` gets focus back when it closes.
export function openPanel(title, nodes, from) {
  if (!pane) build();
  back = from || document.activeElement;
  if (pane.hidden) chatShown = !$("chat-pane").hidden;
  $("panel-title").textContent = title;
  $("panel-error").textContent = "";
  reconcile($("panel-body"), nodes);
  show($("chat-pane"), false);
  show(pane, true);
  $("app-view").classList.add("chatting", "paneled");
  $("panel-title").focus();
}

export function fillPanel(nodes) { if (pane) reconcile($("panel-body"), nodes); }

export function panelOpen(title) {
  return Boolean(pane && !pane.hidden && (!title || $("panel-title").textContent === title));
}

export function panelError(message) { if (pane) $("panel-error").textContent = message; }

export function closePanel() {
  if (!pane || pane.hidden) return;
  show(pane, false);
  const view = $("app-view");
  view.classList.remove("paneled");
  show($("chat-pane"), chatShown);
  if (!chatShown) view.classList.remove("chatting");
  if (back && back.isConnected) back.focus();
}

// A chat was opened from the list: the pane goes, the chat stays.
export function dismissPanel() {
  if (!pane || pane.hidden) return;
  show(pane, false);
  $("app-view").classList.remove("paneled");
}

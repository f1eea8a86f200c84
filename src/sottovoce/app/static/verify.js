// Safety number with one person: the 60 digits, their QR code, and the verified mark
// (`sottovoce verify NAME [--mark|--unmark]`).
import { h } from "./dom.js";
import { fillPanel, openPanel, panelError } from "./panel.js";
import { qrSvg } from "./qr.js";

const TITLE = "Safety number";

export function openVerify(rpc, peer, from) {
  openPanel(TITLE, [h("p", { class: "meta" }, `Looking up ${peer}…`)], from);
  rpc.call("safety", { peer }).then((sn) => fillPanel(verifyView(rpc, sn)), (e) => {
    fillPanel([]);
    panelError(e.message);
  });
}

function verifyView(rpc, sn) {
  const mark = h("p", { id: "verified-state", class: sn.verified ? "ok" : "meta",
    role: "status" }, sn.verified ? `✓ ${sn.peer} is marked verified on this device`
    : `${sn.peer} is not marked verified`);
  const toggle = h("button", { type: "button", id: "mark-verified" },
    sn.verified ? "Clear the verified mark" : "Mark verified");
  toggle.addEventListener("click", () => {
    rpc.call("mark_verified", { peer: sn.peer, verified: !sn.verified }).then((r) => {
      fillPanel(verifyView(rpc, { ...sn, verified: r.verified }));
      document.getElementById("mark-verified").focus();
    }, (e) => panelError(e.message));
  });
  const groups = sn.digits.split(/\s+/);
  return [
    h("p", {}, `For you (${sn.me}) and ${sn.peer}:`),
    h("p", { id: "safety-digits", class: "digits", "aria-label":
      `Safety number: ${groups.join(", ")}` }, sn.digits),
    qrSvg(sn.qr, `QR code of the safety number with ${sn.peer}`),
    h("p", {}, `Compare these 60 digits with what ${sn.peer} sees (in person or by a call), ` +
      `or scan the QR code with ${sn.peer}'s device. Mark verified only when they match.`),
    mark,
    toggle,
  ];
}

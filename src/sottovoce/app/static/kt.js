// Key transparency as `sottovoce kt status` shows it: the pinned log key and its
// fingerprint, the witnesses, the last verified checkpoint and its cosignatures, and
// every alert not yet acknowledged, loudly.
import { h } from "./dom.js";
import { fillPanel, openPanel, panelError, panelOpen } from "./panel.js";

const TITLE = "Key transparency";

function age(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return s < 172800 ? `${Math.floor(s / 3600)} h` : `${Math.floor(s / 86400)} days`;
}

export function openKt(rpc, from) {
  openPanel(TITLE, [h("p", { class: "meta" }, "Checking the log…")], from);
  rpc.call("kt_status").then((s) => draw(rpc, s), (e) => panelError(e.message));
}

function row(name, ...value) { return [h("dt", {}, name), h("dd", {}, ...value)]; }

function draw(rpc, s) {
  if (!panelOpen(TITLE)) return;
  const out = [];
  if (s.alerts.length) {
    const ack = h("button", { type: "button", id: "kt-ack" }, "Acknowledge (dealt with)");
    ack.addEventListener("click", () => rpc.call("kt_ack").then((x) => draw(rpc, x),
      (e) => panelError(e.message)));
    out.push(h("section", { id: "kt-alerts", class: "alert-box", role: "alert" },
      h("h3", {}, `KEY-TRANSPARENCY ALERT: ${s.alerts.length} not acknowledged ` +
        "(the server may be showing you forged keys)"),
      h("ul", {}, ...s.alerts.map((a) => h("li", {},
        `[${new Date(a.atMs).toISOString().slice(0, 16).replace("T", " ")} UTC] ` +
        `${a.kind}: ${a.message}`))), ack));
  }
  if (s.witnessWarning) {
    out.push(h("p", { class: "alert-box", role: "alert" }, "KEY-TRANSPARENCY WARNING: no " +
      "pinned witness can cosign the log, so no lookup can be verified and every one is " +
      "refused (sottovoce kt pin-witness VKEY)."));
  }
  const dl = [];
  if (!s.pinned) {
    dl.push(...row("log", `not pinned (${s.why})`));
  } else {
    dl.push(...row("log key", h("span", { class: "mono wrap", id: "kt-log-key" }, s.logKey)));
    dl.push(...row("fingerprint", h("span", { class: "mono", id: "kt-fingerprint" },
      s.fingerprint)));
    const wit = s.policy === "opted_out"
      ? `${s.witnesses.length} pinned, none required (opted out)`
      : `${s.witnesses.length} pinned, ${s.required} cosignature(s) required`;
    dl.push(...row("witnesses", wit, ...s.witnesses.map((w) =>
      h("div", { class: "mono wrap" }, w))));
    if (s.policy !== "opted_out") dl.push(...row("max age", age(s.maxAgeMs)));
    const cp = s.checkpoint;
    dl.push(...row("checkpoint", cp
      ? h("span", { id: "kt-checkpoint" }, `size ${cp.size}, root ${cp.root}…`)
      : "none verified yet"));
    if (cp) {
      dl.push(...row("cosignatures", cp.cosignatures.length
        ? h("ul", { id: "kt-cosignatures" }, ...cp.cosignatures.map((c) =>
          h("li", {}, `${c.name}, ${age(c.agoMs)} ago`)))
        : "none"));
    }
  }
  dl.push(...row("own account", `${s.ownVersions} version(s) checked`));
  dl.push(...row("check now", h("span", { id: "kt-check",
    class: s.check.startsWith("FAILED") ? "error" : "" }, s.check)));
  dl.push(...row("alerts", s.alerts.length ? `${s.alerts.length} (above)` : "none"));
  out.push(h("dl", { class: "facts" }, ...dl));
  fillPanel(out);
}

// A room's audit trail as a timeline (`sottovoce room audit ROOM`): every signed entry
// with whether it verified; entries that are not authentic are shown as skipped, and a
// broken chain as INVALID.
import { h } from "./dom.js";
import { fillPanel, openPanel, panelError, panelOpen } from "./panel.js";

const TITLE = "Audit trail";

export function openAudit(rpc, peer, label, from) {
  openPanel(TITLE, [h("p", { class: "meta" }, `Fetching and verifying # ${label}…`)], from);
  rpc.call("audit", { peer }).then((t) => draw(label, t), (e) => panelError(e.message));
}

function subjects(e) {
  return e.subjects.map(([a, b]) => (e.setting ? `${a} = ${b}` : `${a}/${b}`)).join(", ");
}

function draw(label, t) {
  if (!panelOpen(TITLE)) return;
  if (!t.valid) {
    fillPanel([h("p", { id: "audit-summary", class: "alert-box", role: "alert" },
      `# ${label}: audit trail INVALID: ${t.error}`)]);
    return;
  }
  const items = [...t.entries, ...t.rejected].sort((a, b) => a.index - b.index).map((e) => {
    if (!e.verified) {
      return h("li", { class: "entry bad" }, h("span", { class: "mark" }, "✗ not authentic"),
        ` entry #${e.index} skipped: ${e.reason}`);
    }
    const at = new Date(e.atMs).toLocaleString([], { dateStyle: "medium", timeStyle: "medium" });
    return h("li", { class: "entry" },
      h("span", { class: "mark" }, "✓", h("span", { class: "sr-only" }, " verified:")),
      h("div", {}, h("strong", {}, `${e.actor}: ${e.action} ${subjects(e)}`.trim()),
        h("div", { class: "meta" }, `#${e.index} · ${at} · epoch ${e.epoch} · device ` +
          e.actorDevice)));
  });
  const skipped = t.rejected.length ? `, ${t.rejected.length} skipped` : "";
  fillPanel([
    h("p", { id: "audit-summary", role: "status" }, `# ${label}: ✓ ${t.entries.length} entries ` +
      `verified (links, signatures, epoch bindings)${skipped}`),
    h("ol", { id: "audit-timeline", class: "timeline", "aria-label": "Audit entries, oldest first" },
      ...items),
  ]);
}

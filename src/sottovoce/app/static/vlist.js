// A virtual list for a long chat: only the rows near the viewport are in the page (a
// spacer above and below stands for the rest), so a 10,000-message chat opens and
// scrolls in short tasks. Up to FULL rows are all rendered, as a plain list.
// Heights are measured as rows are shown; rows not shown yet count as the average.
export const FULL = 100;
const OVERSCAN_PX = 400;
const FIRST_PAD_PX = 60;  // a jump draws what is in view first, the rest in a next task
const BOTTOM = Infinity;

export class VList {
  // `list`: the scrolling <ol>; `render(item)`: its <li>; `onTop()`: called when the
  // top is near (to fetch older items).
  constructor(list, render, onTop) {
    this.list = list;
    this.render = render;
    this.onTop = onTop;
    this.items = [];
    this.heights = new Map();
    this.nodes = new Map();
    this.top = document.createElement("li");
    this.bottom = document.createElement("li");
    for (const s of [this.top, this.bottom]) {
      s.className = "spacer";
      s.setAttribute("aria-hidden", "true");
    }
    this.frame = 0;
    list.addEventListener("scroll", () => {
      if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.draw(); });
    }, { passive: true });
  }

  get virtual() { return this.items.length > FULL; }

  // New items (oldest first), drawn once. `keep`: "bottom" stays at the bottom if it
  // was there; "anchor": older items were added above, what was shown stays put.
  set(items, keep) {
    const list = this.list;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    let target = list.scrollTop;
    if (keep === "anchor" && this.items.length) {
      const oldFirst = this.items[0].id;
      const avg = this.average();
      for (const m of items) {
        if (m.id === oldFirst) break;
        target += this.heights.get(m.id) || avg;
      }
    }
    if (keep === "bottom" && atBottom) target = BOTTOM;
    this.items = items;
    list.classList.toggle("virtual", this.virtual);
    list.setAttribute("aria-live", this.virtual ? "off" : "polite");
    if (this.virtual) list.setAttribute("tabindex", "0"); else list.removeAttribute("tabindex");
    this.draw(target);
  }

  node(m) {
    const key = JSON.stringify(m);
    const old = this.nodes.get(m.id);
    if (old && old.key === key) return old.el;
    const el = this.render(m);
    el.dataset.id = m.id;
    this.nodes.set(m.id, { key, el });
    return el;
  }

  average() {
    if (!this.heights.size) return 64;
    let sum = 0;
    for (const v of this.heights.values()) sum += v;
    return sum / this.heights.size;
  }

  // The rows for scroll position `target` (BOTTOM: the end), then scrolled there so
  // that what was at `target` stays in view however the measured heights came out.
  draw(target = this.list.scrollTop) {
    const { list, items } = this;
    let first = 0;
    let last = items.length;
    let above0 = 0;
    if (this.virtual) {
      const wide = this.range(target, OVERSCAN_PX);
      const missing = items.slice(wide[0], wide[1]).some((m) => !this.nodes.has(m.id));
      [first, last, above0] = missing ? this.range(target, FIRST_PAD_PX) : wide;
      if (missing && !this.later) {
        this.later = setTimeout(() => { this.later = 0; this.draw(); }, 0);
      }
    }
    const rows = items.slice(first, last).map((m) => this.node(m));
    const want = this.virtual ? [this.top, ...rows, this.bottom] : rows;
    want.forEach((node, i) => {
      const current = list.children[i];
      if (current !== node) list.insertBefore(node, current || null);
    });
    while (list.children.length > want.length) list.lastElementChild.remove();
    const fresh = rows.filter((el) => !this.heights.has(el.dataset.id));
    if (fresh.length) {  // one layout for the rows new here, none when nothing is new
      if (this.margin === undefined) {  // the rows' margin, from the stylesheet: read once
        this.margin = parseFloat(getComputedStyle(fresh[0]).marginBottom) || 0;
      }
      for (const el of fresh) this.heights.set(el.dataset.id, el.offsetHeight + this.margin);
    }
    if (this.nodes.size > 10 * FULL) {  // detached rows are not kept for ever
      const shown = new Set(rows);
      for (const [id, n] of this.nodes) if (!shown.has(n.el)) this.nodes.delete(id);
    }
    let above = 0;
    if (this.virtual) {
      const avg = this.average();
      let below = 0;
      for (let i = 0; i < first; i++) above += this.heights.get(items[i].id) || avg;
      for (let i = last; i < items.length; i++) below += this.heights.get(items[i].id) || avg;
      this.top.style.height = `${above}px`;
      this.bottom.style.height = `${below}px`;
    }
    if (target === BOTTOM) {
      list.scrollTop = list.scrollHeight;
    } else {
      const at = Math.max(0, target + above - above0);
      if (Math.abs(list.scrollTop - at) > 1) list.scrollTop = at;
    }
    if (list.scrollTop < OVERSCAN_PX && (first === 0 || !this.virtual) && items.length >= FULL) {
      this.onTop();
    }
  }

  // [first, last, the height above first] of the rows around `target`, `pad` pixels
  // more on either side.
  range(target, pad) {
    const { list, items } = this;
    const avg = this.average();
    const h = (i) => this.heights.get(items[i].id) || avg;
    if (target === BOTTOM) {
      let y = 0;
      let first = items.length;
      while (first > 0 && y < list.clientHeight + pad) y += h(--first);
      let above = 0;
      for (let i = 0; i < first; i++) above += h(i);
      return [first, items.length, above];
    }
    const from = target - pad;
    const to = target + list.clientHeight + pad;
    let y = 0;
    let first = -1;
    let above = 0;
    for (let i = 0; i < items.length; i++) {
      const hi = h(i);
      if (first < 0 && y + hi >= from) { first = i; above = y; }
      if (first >= 0 && y > to) return [first, i, above];
      y += hi;
    }
    if (first < 0) return [items.length - 1, items.length, y - h(items.length - 1)];
    return [first, items.length, above];
  }
}

// A virtual list for a long chat: only the rows near the viewport are in the page (a
// spacer above and below stands for the rest), so a 10,000-message chat opens and
// scrolls in short tasks. Up to FULL rows are all rendered, as a plain list.
// Heights are measured as rows are shown; rows not shown yet count as the average.
export const FULL = 100;
const OVERSCAN_PX = 800;

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
    this.onScroll = () => {
      if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.draw(); });
    };
    list.addEventListener("scroll", this.onScroll, { passive: true });
  }

  get virtual() { return this.items.length > FULL; }

  // New items (oldest first). `keep`: "bottom" stays at the bottom if it was there,
  // "anchor" keeps the first row shown where it is (older rows were added above).
  set(items, keep) {
    const list = this.list;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const anchor = keep === "anchor" ? this.firstShown() : null;
    const ids = new Set(items.map((m) => m.id));
    for (const id of this.nodes.keys()) if (!ids.has(id)) this.nodes.delete(id);
    this.items = items;
    list.classList.toggle("virtual", this.virtual);
    list.setAttribute("aria-live", this.virtual ? "off" : "polite");
    if (this.virtual) list.setAttribute("tabindex", "0"); else list.removeAttribute("tabindex");
    if (anchor) {
      this.draw();
      const el = this.nodes.get(anchor.id);
      if (el) list.scrollTop += el.el.offsetTop - anchor.offset;
    }
    this.draw();
    if (keep === "bottom" && atBottom) { list.scrollTop = list.scrollHeight; this.draw(); }
  }

  firstShown() {
    for (const child of this.list.children) {
      if (child.classList.contains("spacer")) continue;
      if (child.offsetTop + child.offsetHeight >= this.list.scrollTop) {
        const id = child.dataset.id;
        return id ? { id, offset: child.offsetTop } : null;
      }
    }
    return null;
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

  draw() {
    const { list, items } = this;
    let first = 0;
    let last = items.length;
    let above = 0;
    let below = 0;
    if (this.virtual) {
      const avg = this.average();
      const from = list.scrollTop - OVERSCAN_PX;
      const to = list.scrollTop + list.clientHeight + OVERSCAN_PX;
      let y = 0;
      first = -1;
      for (let i = 0; i < items.length; i++) {
        const hgt = this.heights.get(items[i].id) || avg;
        if (first < 0 && y + hgt >= from) { first = i; above = y; }
        if (first >= 0 && y > to) { last = i; break; }
        y += hgt;
      }
      if (first < 0) { first = Math.max(0, items.length - 1); above = y; }
      let rest = 0;
      for (let i = last; i < items.length; i++) rest += this.heights.get(items[i].id) || avg;
      below = rest;
    }
    const rows = items.slice(first, last).map((m) => this.node(m));
    const want = this.virtual ? [this.top, ...rows, this.bottom] : rows;
    this.top.style.height = `${above}px`;
    this.bottom.style.height = `${below}px`;
    want.forEach((node, i) => {
      const current = list.children[i];
      if (current !== node) list.insertBefore(node, current || null);
    });
    while (list.children.length > want.length) list.lastElementChild.remove();
    if (this.virtual) {
      for (const el of rows) {
        const style = getComputedStyle(el);
        this.heights.set(el.dataset.id, el.offsetHeight + parseFloat(style.marginBottom));
      }
      if (first === 0 && list.scrollTop < OVERSCAN_PX) this.onTop();
    } else if (list.scrollTop < OVERSCAN_PX / 4 && items.length >= FULL) {
      this.onTop();
    }
  }
}

// Building the page: every string becomes a text node, never markup.
// No innerHTML, no inline handlers, no URLs made from message text: the trusted-types
// policy below makes any HTML sink throw, so a slip here fails loudly instead of running.

export const policy = window.trustedTypes
  ? window.trustedTypes.createPolicy("sottovoce", {})
  : null;

const ATTRIBUTES = new Set(["class", "type", "role", "title", "download", "aria-label",
  "aria-current", "aria-live", "for", "id", "value", "tabindex", "autocomplete", "placeholder"]);

// h("li", {class: "msg"}, "text", child) -> an element. Only listed attributes are set,
// so no "on…" handler or "src" can come in through a caller's object.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (!ATTRIBUTES.has(name)) throw new Error(`attribute ${name} is not allowed`);
    el.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// A link to one of the app's own downloads; the id was checked against its shape.
export function fileLink(messageId, label) {
  if (!/^[A-Za-z0-9_-]{8,128}$/.test(messageId)) return h("span", {}, label);
  const a = h("a", { download: "" }, label);
  a.href = `/file/${messageId}`;
  return a;
}

// Put `nodes` into `parent` in order, moving only what changed (focus stays put).
export function reconcile(parent, nodes) {
  nodes.forEach((node, i) => {
    const current = parent.children[i];
    if (current !== node) parent.insertBefore(node, current || null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

export const $ = (id) => document.getElementById(id);

export function show(el, visible) { el.hidden = !visible; }

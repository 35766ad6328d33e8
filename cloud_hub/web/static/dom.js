// Building DOM nodes: text always goes in as text nodes, never as HTML, so nothing the
// API returns (device ids, tags, reasons) can inject markup or script.

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "style" && typeof value === "object") {
      Object.assign(el.style, value); // CSSOM, which the page's CSP allows (style attributes it does not)
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "value" && "value" in el) {
      el.value = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** h("a", {href: "#/x"}, "text", child, ...) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** "#/device/" + id, with the id safe in a URL fragment. */
export function link(path, text, attrs) {
  return h("a", { href: "#" + path, ...attrs }, text);
}

export function ago(unixSeconds) {
  if (!unixSeconds) return "never";
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

export function when(unixSeconds) {
  return unixSeconds ? new Date(unixSeconds * 1000).toLocaleString() : "—";
}

export function num(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  return Number(value.toPrecision(digits)).toString();
}

export function pct(value) {
  return value === null || value === undefined ? "—" : (value * 100).toFixed(1) + "%";
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

export function badge(text, kind) {
  return h("span", { class: "badge " + (kind || String(text).replace(/[^a-z_-]/gi, "")) }, text);
}

export function tags(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h("span", { class: "muted" }, "—");
  return h("span", { class: "tags" }, entries.map(([k, v]) => h("span", { class: "tag" }, k + "=" + v)));
}

/** A table from column specs: [{label, cell: row => node|string, class?}]. */
export function table(columns, rows, { empty = "nothing yet", rowAttrs } = {}) {
  if (!rows.length) return h("p", { class: "empty muted" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {},
        columns.map((c) => h("td", { class: c.class, "data-label": c.label }, c.cell(row))))))));
}

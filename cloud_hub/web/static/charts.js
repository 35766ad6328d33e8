// Small SVG line charts: time on x, one or more series on y, gaps where a value is null.

import { h, svg } from "./dom.js";

const narrow = () => window.innerWidth < 640;
const PAD = { left: 52, right: 12, top: 12, bottom: 26 };
export const COLORS = ["#2f6fde", "#e0712c", "#2a9d6f", "#b5489c", "#8a6d1f", "#5b5b5b"];

function niceMax(value) {
  if (!(value > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= value) return m * p;
  return 10 * p;
}

function timeLabel(t) {
  const d = new Date(t * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** Path data for one series, starting a new segment after every null. */
export function pathData(points, x, y) {
  let d = "";
  let pen = false;
  for (const [px, py] of points) {
    if (py === null || py === undefined || !Number.isFinite(py)) { pen = false; continue; }
    d += (pen ? "L" : "M") + x(px).toFixed(1) + " " + y(py).toFixed(1) + " ";
    pen = true;
  }
  return d.trim();
}

/**
 * lineChart({title, unit, series: [{name, points: [[t, v], ...]}], yMax, format, threshold})
 * returns a <figure> holding an <svg>; `threshold` draws a dashed line (e.g. the alert level).
 */
export function lineChart({ title, series, yMax, format = (v) => String(v), threshold, id }) {
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]).filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  const figure = h("figure", { class: "chart", id });
  figure.append(h("figcaption", {}, title));
  if (!ys.length) {
    figure.append(h("p", { class: "muted empty" }, "no data yet"));
    return figure;
  }
  const W = narrow() ? 380 : 600;
  const H = narrow() ? 180 : 200;
  let x0 = Math.min(...xs);
  let x1 = Math.max(...xs);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const top = yMax !== undefined ? yMax : niceMax(Math.max(...ys, threshold || 0) * 1.05);
  const x = (t) => PAD.left + ((t - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (Math.min(v, top) / top) * (H - PAD.top - PAD.bottom);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "chart-svg" });
  for (let i = 0; i <= 4; i += 1) {
    const v = (top * i) / 4;
    root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: PAD.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, format(v)));
  }
  root.append(svg("text", { x: PAD.left, y: H - 6, class: "tick" }, timeLabel(x0)));
  root.append(svg("text", { x: W - PAD.right, y: H - 6, class: "tick", "text-anchor": "end" }, timeLabel(x1)));
  if (threshold !== undefined && threshold !== null) {
    root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(threshold), y2: y(threshold), class: "threshold" }));
  }
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const d = pathData(s.points, x, y);
    if (d) root.append(svg("path", { d, class: "line", stroke: color, "data-series": s.name }));
    const last = [...s.points].reverse().find((p) => p[1] !== null && p[1] !== undefined);
    if (last) root.append(svg("circle", { cx: x(last[0]), cy: y(last[1]), r: 3, fill: color }));
  });
  figure.append(root);
  if (series.length > 1 || series[0].name) {
    figure.append(h("div", { class: "legend" }, series.map((s, i) => h("span", {},
      h("i", { style: { background: s.color || COLORS[i % COLORS.length] } }), s.name))));
  }
  return figure;
}

// One device: what it is and runs, and its telemetry over time as charts.

import { ApiError, api, seg } from "./api.js";
import { ago, badge, h, link, num, pct, replace, tags, when } from "./dom.js";
import { lineChart } from "./charts.js";

const PSI_ALERT = 0.25; // the drift engine's default open_above for distribution signals

export function mount(el, ctx, { id }) {
  const info = h("div", { class: "card device-info" });
  const charts = h("div", { class: "charts", id: "device-charts" });
  el.append(h("p", {}, link("/fleet", "← Fleet")), h("h1", { id: "device-title" }, id), info, charts);

  return {
    async refresh() {
      const [dev, series] = await Promise.all([
        api("/v1/devices/" + seg(id)).catch((err) => ({ error: err })),
        api("/v1/console/devices/" + seg(id) + "/series", { params: { limit: 300 } }).catch((err) => ({ error: err })),
      ]);
      for (const r of [dev, series]) if (r.error && r.error.status === 401) throw r.error;
      if (dev.error) {
        replace(info, h("p", { class: "error" }, dev.error.message));
      } else {
        replace(info, h("dl", { class: "facts" },
          h("dt", {}, "Status"), h("dd", {}, badge(dev.status)),
          h("dt", {}, "Profile"), h("dd", {}, dev.profile),
          h("dt", {}, "Model"), h("dd", { id: "device-model" }, dev.model_name ? dev.model_name + " " + (dev.model_version || "?") : "none"),
          h("dt", {}, "Agent"), h("dd", {}, dev.agent_version),
          h("dt", {}, "Tags"), h("dd", {}, tags(dev.tags)),
          h("dt", {}, "Registered"), h("dd", {}, when(dev.registered_at)),
          h("dt", {}, "Last seen"), h("dd", {}, ago(dev.last_seen))));
      }
      if (series.error) {
        const why = series.error instanceof ApiError && series.error.status === 503
          ? "No telemetry on this hub: " + series.error.message : series.error.message;
        replace(charts, h("p", { class: "muted" }, why));
        return;
      }
      const pts = series.points;
      if (!pts.length) {
        replace(charts, h("p", { class: "empty muted" }, "No telemetry from this device yet."));
        return;
      }
      const at = (key) => pts.map((p) => [p.end_unix, p[key]]);
      const inputs = [...new Set(pts.flatMap((p) => Object.keys(p.input_psi)))].sort();
      const last = pts[pts.length - 1];
      const d = series.delivery;
      replace(charts,
        h("p", { class: "muted" }, pts.length + " windows; last " + ago(last.end_unix) + ", " + num(last.requests) +
          " requests, fallback " + pct(last.fallback_rate) + ", input PSI max " + num(last.input_psi_max)),
        d ? h("p", { class: d.lost || d.missing_open ? "error" : "muted", id: "device-delivery" },
          "Delivery: last window " + d.last_sequence + ", " + d.missing_open + " missing (asked for again), " +
          d.lost + " lost; clock offset " + (d.clock_offset_s == null ? "unknown" : num(d.clock_offset_s, 3) + " s")) : null,
        lineChart({ id: "chart-latency", title: "Latency (ms)", format: (v) => num(v, 3),
          series: [{ name: "mean", points: at("latency_mean_ms") }, { name: "p95 (bin edge)", points: at("latency_p95_ms") }] }),
        lineChart({ id: "chart-fallback", title: "Fallback rate (cloud + degraded)", yMax: 1, format: pct,
          series: [{ name: "fallback", points: at("fallback_rate") }, { name: "errors", points: at("error_rate") }] }),
        lineChart({ id: "chart-confidence", title: "Mean confidence", yMax: 1, format: (v) => v.toFixed(2),
          series: [{ name: "confidence", points: at("confidence_mean") }] }),
        lineChart({ id: "chart-drift", title: "Input drift (PSI vs reference; dashed: alert level)", threshold: PSI_ALERT,
          format: (v) => v.toFixed(2),
          series: inputs.length ? inputs.map((k) => ({ name: k, points: pts.map((p) => [p.end_unix, p.input_psi[k] ?? null]) }))
            : [{ name: "no input summaries", points: [] }] }));
    },
  };
}

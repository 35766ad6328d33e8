// One device: what it is and runs, and its telemetry over time as charts.

import { ApiError, api, seg } from "./api.js";
import { ago, badge, h, link, num, pct, replace, tags, when } from "./dom.js";
import { lineChart } from "./charts.js";

const PSI_ALERT = 0.25; // the drift engine's default open_above for distribution signals
const HISTORY_S = 7 * 86400; // the hourly rollups chart's range (raw windows are kept for an hour by default)

/** Hour rollups summed per bucket (a device that changed model version in an hour has two rows there). */
function hourly(rollups) {
  const by = new Map();
  for (const r of (rollups && rollups.items) || []) {
    const b = by.get(r.bucket) || { t: r.bucket, requests: 0, fallback: 0, errors: 0, latency: 0 };
    b.requests += r.edge + r.cloud + r.edge_degraded + r.error;
    b.fallback += r.cloud + r.edge_degraded;
    b.errors += r.error;
    b.latency += r.latency_sum_ms;
    by.set(r.bucket, b);
  }
  return [...by.values()].sort((a, b) => a.t - b.t);
}

function historyCharts(hours) {
  if (!hours.length) return null;
  const per = (k) => hours.map((b) => [b.t, b.requests ? b[k] / b.requests : null]);
  return h("div", {},
    h("h2", {}, "Last 7 days, hourly (rollups)"),
    lineChart({ id: "chart-history-requests", title: "Requests per hour", format: (v) => num(v, 3),
      series: [{ name: "requests", points: hours.map((b) => [b.t, b.requests]) }] }),
    lineChart({ id: "chart-history-fallback", title: "Fallback and error rate per hour", yMax: 1, format: pct,
      series: [{ name: "fallback", points: per("fallback") }, { name: "errors", points: per("errors") }] }),
    lineChart({ id: "chart-history-latency", title: "Mean latency per hour (ms)", format: (v) => num(v, 3),
      series: [{ name: "mean", points: per("latency") }] }));
}

export function mount(el, ctx, { id }) {
  const info = h("div", { class: "card device-info" });
  const charts = h("div", { class: "charts", id: "device-charts" });
  const older = h("div", { class: "charts", id: "device-history" }); // hour rollups: kept long after raw windows
  el.append(h("p", {}, link("/fleet", "← Fleet")), h("h1", { id: "device-title" }, id), info, charts, older);

  return {
    async refresh() {
      const [dev, series, rollups] = await Promise.all([
        api("/v1/devices/" + seg(id)).catch((err) => ({ error: err })),
        api("/v1/console/devices/" + seg(id) + "/series", { params: { limit: 300 } }).catch((err) => ({ error: err })),
        api("/v1/telemetry/devices/" + seg(id) + "/rollups", {
          params: { resolution: "hour", since: Math.floor(Date.now() / 1000) - HISTORY_S, limit: 1000 },
        }).catch((err) => ({ error: err })),
      ]);
      for (const r of [dev, series, rollups]) if (r.error && r.error.status === 401) throw r.error;
      replace(older, rollups.error ? null : historyCharts(hourly(rollups)));
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
        replace(charts, h("p", { class: "empty muted" }, "No recent telemetry windows from this device."));
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

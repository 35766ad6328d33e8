// Drift alerts, newest first, with the statistics when they opened and now.

import { ApiError, api } from "./api.js";
import { ago, badge, h, num, replace, table, tags, when } from "./dom.js";

function stat(stats) {
  if (!stats) return "—";
  const parts = [];
  if (stats.psi !== undefined) parts.push("PSI " + num(stats.psi));
  else if (stats.value !== undefined && stats.value !== null) parts.push("value " + num(stats.value));
  if (stats.rate !== undefined) parts.push("rate " + num(stats.rate) + " (was " + num(stats.baseline_rate) + ")");
  if (stats.p_value !== undefined) parts.push("p " + num(stats.p_value, 2));
  if (stats.n_cur !== undefined) parts.push("n " + num(stats.n_cur));
  return parts.join(" · ");
}

const COLUMNS = [
  { label: "#", cell: (a) => String(a.id) },
  { label: "State", cell: (a) => badge(a.state, a.state === "open" ? "bad" : "closed") },
  { label: "Model", cell: (a) => a.model_name + " " + a.model_version },
  { label: "Cohort", cell: (a) => h("span", {}, (a.cohort && a.cohort.profile) || "?", " ", tags(a.cohort && a.cohort.tags)) },
  { label: "Signal", cell: (a) => h("code", { class: "signal" }, a.signal) },
  { label: "Opened", cell: (a) => h("span", { title: when(a.opened_at) }, ago(a.opened_at)) },
  { label: "At opening", cell: (a) => stat(a.open_stats) },
  { label: "Latest", cell: (a) => a.state === "open" ? stat(a.last_stats) : "closed " + ago(a.closed_at) },
];

export function mount(el) {
  const filter = h("select", { id: "alert-state", "aria-label": "state" },
    h("option", { value: "" }, "open and closed"), h("option", { value: "open" }, "open"),
    h("option", { value: "closed" }, "closed"));
  const body = h("div", { id: "alerts-table" });
  const view = {
    async refresh() {
      let page;
      try {
        page = await api("/v1/drift/alerts", { params: { limit: 200, state: filter.value } });
      } catch (err) {
        if (err instanceof ApiError && err.status === 503) {
          replace(body, h("p", { class: "muted" }, "No telemetry on this hub: " + err.message));
          return;
        }
        throw err;
      }
      replace(body,
        page.note ? h("p", { class: "muted" }, page.note) : null,
        table(COLUMNS, page.items, { empty: "No drift alerts.", rowAttrs: (a) => ({ "data-alert": a.id, class: a.state }) }));
    },
  };
  filter.addEventListener("change", () => view.refresh());
  el.append(h("h1", {}, "Drift alerts"),
    h("p", { class: "muted" }, "An alert opens when a cohort's inputs, confidence or class mix move away from the " +
      "model's reference (PSI), or its fallback or error rate rises; it closes when they come back."),
    h("div", { class: "filters" }, filter), body);
  return view;
}

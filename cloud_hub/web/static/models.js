// Models, their versions, and each version's variants with the compiler's metrics.

import { api, seg } from "./api.js";
import { ago, bytes, h, num, pct, replace, table } from "./dom.js";

const manifests = new Map(); // name@version -> manifest (versions are immutable: fetch once)

async function manifest(name, version) {
  const key = name + "@" + version;
  if (!manifests.has(key)) {
    manifests.set(key, await api("/v1/models/" + seg(name) + "/versions/" + seg(version) + "/manifest"));
  }
  return manifests.get(key);
}

const METRICS = [
  ["agreement", "agreement", pct], ["accuracy", "accuracy", pct], ["mean_confidence", "confidence", (v) => num(v)],
  ["latency_p50_ms", "p50 ms", (v) => num(v)], ["latency_p95_ms", "p95 ms", (v) => num(v)],
  ["throughput_b8", "samples/s (b8)", (v) => num(v, 4)], ["file_bytes", "file", bytes], ["weight_bytes", "weights", bytes],
];

function variantTable(doc) {
  const chosenBy = {};
  for (const [profile, choice] of Object.entries(doc.profiles || {})) {
    if (choice.chosen) (chosenBy[choice.chosen] = chosenBy[choice.chosen] || []).push(profile);
  }
  const columns = [
    { label: "Variant", cell: (v) => h("code", {}, v.id) },
    { label: "Runtime", cell: (v) => v.runtime + " " + v.precision },
    { label: "Chosen for", cell: (v) => (chosenBy[v.id] || []).join(", ") || h("span", { class: "muted" }, "—") },
    { label: "fallback below", class: "num",
      cell: (v) => (v.calibration ? num(v.calibration.threshold) + " (~" + pct(v.calibration.expected_fallback_rate) + ")" : "—") },
    ...METRICS.map(([key, label, fmt]) => ({
      label, class: "num",
      cell: (v) => (v.metrics && v.metrics[key] !== undefined ? fmt(v.metrics[key]) : "—"),
    })),
  ];
  return table(columns, doc.variants || [], { empty: "This version has no variants.", rowAttrs: (v) => ({ "data-variant": v.id }) });
}

function choices(doc) {
  const rows = Object.entries(doc.profiles || {}).map(([profile, c]) => ({ profile, ...c }));
  return table([
    { label: "Profile", cell: (c) => c.profile },
    { label: "Runs", cell: (c) => c.chosen ? h("code", {}, c.chosen) : h("span", { class: "bad-text" }, "nothing fits") },
    { label: "Why", cell: (c) => c.reason || "—" },
  ], rows, { empty: "No profile choices recorded." });
}

export function mount(el) {
  const list = h("div", { id: "models-list" });
  const selected = new Map(); // model -> version the user picked
  let shown = "";
  el.append(h("h1", {}, "Models"), list);

  const view = {
    async refresh() {
      const page = await api("/v1/models", { params: { limit: 100 } });
      if (!page.items.length) {
        replace(list, h("p", { class: "empty muted" }, "No model registered yet (tandem-hub models register DIR)."));
        return;
      }
      const all = await Promise.all(page.items.map((m) => api("/v1/models/" + seg(m.name) + "/versions", { params: { limit: 50 } })));
      // Rebuild only when something changed, so an open version picker is not closed under the user.
      const signature = JSON.stringify([page.items, all.map((v) => v.items.map((x) => x.version)), [...selected]]);
      if (signature === shown) return;
      const cards = await Promise.all(page.items.map(async (m, i) => {
        const versions = all[i];
        const version = selected.get(m.name) || m.latest_version;
        const doc = await manifest(m.name, version);
        const picker = h("select", { "aria-label": "version of " + m.name, class: "version-picker" },
          versions.items.map((v) => h("option", { value: v.version }, v.version + " · " + bytes(v.size_bytes))));
        picker.value = version;
        picker.addEventListener("change", () => { selected.set(m.name, picker.value); view.refresh(); });
        return h("section", { class: "card model", "data-model": m.name },
          h("h2", {}, m.name, h("span", { class: "muted" }, " · " + m.versions + " versions, latest " + m.latest_version +
            ", registered " + ago(m.updated_at))),
          h("div", { class: "filters" }, h("label", {}, "Version ", picker),
            h("span", { class: "muted" }, "created " + (doc.created_at || "?") + (doc.expires_at ? ", expires " + doc.expires_at : ""))),
          h("h3", {}, "Variants"), variantTable(doc),
          h("h3", {}, "Per hardware profile"), choices(doc));
      }));
      replace(list, cards);
      shown = signature;
    },
  };
  return view;
}

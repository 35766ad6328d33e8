// Fleet: every device grouped by hardware profile, with filters by profile, status and tag.

import { ApiError, api } from "./api.js";
import { ago, badge, h, link, replace, table, tags } from "./dom.js";

const COLUMNS = [
  { label: "Device", cell: (d) => link("/device/" + encodeURIComponent(d.device_id), d.device_id, { class: "device-link" }) },
  { label: "Status", cell: (d) => badge(d.status) },
  { label: "Model", cell: (d) => d.model_name ? d.model_name + " " + (d.model_version || "?") : h("span", { class: "muted" }, "none") },
  { label: "Agent", cell: (d) => d.agent_version },
  { label: "Tags", cell: (d) => tags(d.tags) },
  { label: "Last seen", cell: (d) => h("span", { title: new Date(d.last_seen * 1000).toLocaleString() }, ago(d.last_seen)) },
];

export function mount(el) {
  const profiles = new Set();
  const profile = h("select", { id: "filter-profile", "aria-label": "profile" }, h("option", { value: "" }, "all profiles"));
  const status = h("select", { id: "filter-status", "aria-label": "status" },
    h("option", { value: "" }, "any status"), h("option", { value: "online" }, "online"),
    h("option", { value: "offline" }, "offline"));
  const tag = h("input", { id: "filter-tag", type: "search", placeholder: "tag: site=lyon, ring=beta", "aria-label": "tag" });
  const filterError = h("p", { class: "error", hidden: true });
  const summary = h("div", { class: "summary" });
  const groups = h("div", { id: "fleet-groups" });
  let view = null;

  const refreshNow = () => view.refresh().catch((err) => { filterError.hidden = false; filterError.textContent = err.message; });
  profile.addEventListener("change", refreshNow);
  status.addEventListener("change", refreshNow);
  tag.addEventListener("change", refreshNow);

  el.append(h("h1", {}, "Fleet"), summary,
    h("div", { class: "filters" }, profile, status, tag), filterError, groups);

  function syncProfiles(items) {
    let added = false;
    for (const d of items) if (!profiles.has(d.profile)) { profiles.add(d.profile); added = true; }
    if (!added) return;
    const current = profile.value;
    replace(profile, h("option", { value: "" }, "all profiles"),
      [...profiles].sort().map((p) => h("option", { value: p }, p)));
    profile.value = current;
  }

  view = {
    async refresh() {
      const tagFilters = tag.value.split(",").map((s) => s.trim()).filter(Boolean);
      let page;
      try {
        page = await api("/v1/devices", { params: { limit: 500, profile: profile.value, status: status.value, tag: tagFilters } });
      } catch (err) {
        if (err instanceof ApiError && err.status === 422) {
          filterError.hidden = false;
          filterError.textContent = "Filter: " + err.message;
          return;
        }
        throw err;
      }
      filterError.hidden = true;
      syncProfiles(page.items);
      const online = page.items.filter((d) => d.status === "online").length;
      replace(summary,
        h("div", { class: "stat" }, h("b", { id: "count-total" }, String(page.total)), "devices"),
        h("div", { class: "stat ok" }, h("b", { id: "count-online" }, String(online)), "online"),
        h("div", { class: "stat" }, h("b", {}, String(page.items.length - online)), "offline"),
        h("div", { class: "stat" }, h("b", {}, String(new Set(page.items.map((d) => d.profile)).size)), "profiles"));
      const byProfile = new Map();
      for (const d of page.items) {
        if (!byProfile.has(d.profile)) byProfile.set(d.profile, []);
        byProfile.get(d.profile).push(d);
      }
      if (!byProfile.size) {
        replace(groups, h("p", { class: "empty muted" },
          page.total === 0 && !profile.value && !status.value && !tagFilters.length
            ? "No device has registered yet. Agents register when they start."
            : "No device matches these filters."));
        return;
      }
      replace(groups, [...byProfile.keys()].sort().map((p) => {
        const items = byProfile.get(p);
        const up = items.filter((d) => d.status === "online").length;
        return h("section", { class: "group", "data-profile": p },
          h("h2", {}, p, h("span", { class: "muted" }, " · " + items.length + (items.length === 1 ? " device, " : " devices, ") + up + " online")),
          table(COLUMNS, items, { rowAttrs: (d) => ({ "data-device": d.device_id }) }));
      }));
      if (page.total > page.items.length) {
        groups.append(h("p", { class: "muted" }, "Showing " + page.items.length + " of " + page.total + "; filter to narrow."));
      }
    },
  };
  return view;
}

// Rollouts: the list with a start form, and one rollout's waves, device states, gates and actions.

import { ApiError, api, seg } from "./api.js";
import { ago, badge, h, link, num, replace, table, when } from "./dom.js";

const ACTIONS = {
  pause: (r) => r.status === "running",
  resume: (r) => r.status === "paused" || r.status === "halted",
  abort: (r) => ["running", "paused", "halted"].includes(r.status),
  rollback: (r) => r.status !== "rolled_back" && r.status !== "aborted",
};

function countsText(counts) {
  const entries = Object.entries(counts || {});
  return entries.length ? entries.map(([k, v]) => k + " " + v).join(", ") : "—";
}

export function mount(el, ctx, params) {
  return params.id ? mountDetail(el, ctx, params.id) : mountList(el, ctx);
}

// -- the list and the start form ---------------------------------------------------------

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
}

function parsePairs(text) {
  const out = {};
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const i = part.indexOf("=");
    if (i < 1) throw new Error("selection: expected key=value pairs, e.g. profile=cpu-x86, site=lab (got " + JSON.stringify(part) + ")");
    out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

function startForm(ctx) {
  const model = h("select", { id: "ro-model", name: "model", required: true });
  const version = h("select", { id: "ro-version", name: "version", required: true });
  const select = h("input", { id: "ro-select", name: "select", placeholder: "profile=cpu-x86, site=lab" });
  const waves = h("input", { id: "ro-waves", name: "waves", value: "5,25,100" });
  const minReporting = h("input", { id: "ro-min-reporting", type: "number", min: 0, max: 1, step: 0.05, value: 0.8 });
  const timeout = h("input", { id: "ro-timeout", type: "number", min: 1, step: 1, value: 900 });
  const maxFail = h("input", { id: "ro-max-failure", type: "number", min: 0, max: 1, step: 0.01, value: 0 });
  const maxFallback = h("input", { id: "ro-max-fallback", type: "number", min: 0, max: 1, step: 0.01, value: 0.1 });
  const maxLatency = h("input", { id: "ro-max-latency", type: "number", min: 0.1, step: 0.1, value: 2 });
  const autoRollback = h("input", { id: "ro-auto-rollback", type: "checkbox", checked: true });
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", id: "ro-start" }, "Start rollout");
  const versions = new Map();

  async function loadVersions() {
    const name = model.value;
    if (!name) return;
    if (!versions.has(name)) {
      const page = await api("/v1/models/" + seg(name) + "/versions", { params: { limit: 100 } });
      versions.set(name, page.items.map((v) => v.version));
    }
    const current = version.value;
    replace(version, versions.get(name).map((v) => h("option", { value: v }, v)));
    if (versions.get(name).includes(current)) version.value = current;
  }
  model.addEventListener("change", () => loadVersions().catch((err) => ctx.notify(err.message, "bad")));

  const form = h("form", { id: "rollout-form", class: "card form-grid" },
    h("h2", {}, "Start a rollout"),
    field("Model", model), field("Version", version),
    field("Devices", select, "profile and tags, key=value; empty: every device"),
    field("Waves (%)", waves, "increasing, ending at 100"),
    h("details", {}, h("summary", {}, "Gates"),
      h("div", { class: "form-grid" },
        field("min reporting", minReporting, "share of a wave that must report"),
        field("wave timeout (s)", timeout), field("max failure rate", maxFail),
        field("max fallback rise", maxFallback), field("max latency ratio", maxLatency),
        h("label", { class: "field check" }, autoRollback, h("span", {}, "roll back the fleet when a gate fails")))),
    error, submit);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    try {
      const body = {
        model: model.value, version: version.value, select: parsePairs(select.value),
        waves: waves.value.split(",").map((s) => s.trim()).filter(Boolean).map(Number),
        gates: {
          min_reporting: Number(minReporting.value), wave_timeout_s: Number(timeout.value),
          max_failure_rate: Number(maxFail.value), max_fallback_rise: Number(maxFallback.value),
          max_latency_ratio: Number(maxLatency.value), auto_rollback: autoRollback.checked,
        },
      };
      if (body.waves.some((w) => !Number.isFinite(w))) throw new Error("waves: numbers separated by commas, e.g. 5,25,100");
      const r = await api("/v1/rollouts", { method: "POST", body });
      location.hash = "#/rollouts/" + encodeURIComponent(r.rollout_id);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) throw err;
      error.hidden = false;
      error.textContent = "Not started: " + err.message;
    } finally {
      submit.disabled = false;
    }
  });

  return {
    form,
    async refresh() {
      const page = await api("/v1/models", { params: { limit: 100 } });
      const names = page.items.map((m) => m.name);
      const have = [...model.options].map((o) => o.value);
      if (JSON.stringify(have) !== JSON.stringify(names)) {
        const current = model.value;
        replace(model, names.map((n) => h("option", { value: n }, n)));
        if (names.includes(current)) model.value = current;
        versions.clear();
      }
      if (!version.options.length || versions.size === 0) await loadVersions();
    },
  };
}

const LIST_COLUMNS = [
  { label: "Rollout", cell: (r) => link("/rollouts/" + encodeURIComponent(r.rollout_id), r.rollout_id, { class: "rollout-link" }) },
  { label: "Model", cell: (r) => r.model + " " + r.version },
  { label: "Status", cell: (r) => badge(r.status) },
  { label: "Wave", cell: (r) => r.wave + " of " + r.waves.length + " (" + r.waves.join("/") + "%)" },
  { label: "Devices", cell: (r) => String(r.devices) },
  { label: "States", cell: (r) => countsText(r.counts) },
  { label: "Updated", cell: (r) => ago(r.updated_at) },
];

function mountList(el, ctx) {
  const list = h("div", { id: "rollouts-list" });
  const form = ctx.canOperate ? startForm(ctx) : null;
  el.append(h("h1", {}, "Rollouts"),
    form ? form.form : h("p", { class: "muted", id: "read-only-note" }, "Your token has read scope: starting and steering rollouts needs operate."),
    h("h2", {}, "Recent"), list);
  let formLoaded = false;
  async function loadForm() {
    if (!form || formLoaded) return;
    await form.refresh();
    formLoaded = true; // once: a poll must not reset what the operator is choosing
  }
  return {
    async refresh() {
      const [page] = await Promise.all([
        api("/v1/rollouts", { params: { limit: 50 } }).catch((err) => ({ error: err })),
        loadForm(),
      ]);
      if (page.error) {
        if (page.error.status === 401) throw page.error;
        replace(list, h("p", { class: "muted" }, "Rollouts: " + page.error.message));
        return;
      }
      replace(list, table(LIST_COLUMNS, page.items, { empty: "No rollout yet.", rowAttrs: (r) => ({ "data-rollout": r.rollout_id }) }));
    },
  };
}

// -- one rollout ---------------------------------------------------------------------------

function eventDetail(detail) {
  const { step, result, reason, ...rest } = detail;
  const parts = [];
  if (step) parts.push(h("b", {}, step));
  if (result && result !== "ok") parts.push(badge(result, "bad"));
  if (reason) parts.push(reason);
  const more = Object.entries(rest).map(([k, v]) => k + " " + (typeof v === "object" ? JSON.stringify(v) : v));
  if (more.length) parts.push(h("span", { class: "muted" }, more.join(", ")));
  return h("span", { class: "detail" }, parts.flatMap((p, i) => (i ? [" · ", p] : [p])));
}

function mountDetail(el, ctx, id) {
  const head = h("div", { class: "card", id: "rollout-head" });
  const actions = h("div", { class: "actions", id: "rollout-actions" });
  const waves = h("div", { id: "rollout-waves" });
  const gates = h("div", { id: "rollout-gates" });
  const events = h("div", { id: "rollout-events" });
  let current = null;

  const buttons = {};
  if (ctx.canOperate) {
    for (const name of Object.keys(ACTIONS)) {
      buttons[name] = h("button", { type: "button", class: name === "pause" || name === "resume" ? "secondary" : "danger",
        "data-action": name, onclick: () => act(name) }, name[0].toUpperCase() + name.slice(1));
      actions.append(buttons[name]);
    }
  }

  async function act(name) {
    if ((name === "abort" || name === "rollback") && !window.confirm(name + " rollout " + id + "?")) return;
    try {
      current = await api("/v1/rollouts/" + seg(id) + "/" + name, { method: "POST" });
      ctx.notify(name + ": done; the rollout is " + current.status, "ok");
      await view.refresh();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return ctx.refresh();
      ctx.notify(name + " refused: " + err.message, "bad");
    }
  }

  el.append(h("p", {}, link("/rollouts", "← Rollouts")), h("h1", {}, "Rollout ", h("code", {}, id)), head, actions,
    h("h2", {}, "Waves"), waves, h("h2", {}, "Gates"), gates, h("h2", {}, "Events"), events);

  const view = {
    async refresh() {
      const r = await api("/v1/rollouts/" + seg(id), { params: { events: 30 } });
      current = r;
      replace(head, h("dl", { class: "facts" },
        h("dt", {}, "Model"), h("dd", {}, r.model + " " + r.version),
        h("dt", {}, "Status"), h("dd", { id: "rollout-status" }, badge(r.status)),
        h("dt", {}, "Wave"), h("dd", {}, r.wave + " of " + r.waves.length),
        h("dt", {}, "Devices"), h("dd", {}, r.devices + " (" + countsText(r.counts) + ")"),
        r.reason ? [h("dt", {}, "Reason"), h("dd", { class: "reason" }, r.reason)] : null,
        h("dt", {}, "Started"), h("dd", {}, when(r.created_at)),
        h("dt", {}, "Updated"), h("dd", {}, ago(r.updated_at))));
      for (const [name, allowed] of Object.entries(ACTIONS)) if (buttons[name]) buttons[name].disabled = !allowed(r);
      const byWave = new Map();
      for (const d of r.device_states) {
        if (!byWave.has(d.wave)) byWave.set(d.wave, []);
        byWave.get(d.wave).push(d);
      }
      replace(waves, r.waves.map((percent, i) => {
        const n = i + 1;
        const devs = (byWave.get(n) || []).sort((a, b) => a.device_id.localeCompare(b.device_id));
        const moving = r.status === "running" || r.status === "paused";
        const state = n < r.wave || (n === r.wave && !moving) ? "done" : n === r.wave ? "current" : "later";
        return h("section", { class: "wave " + state, "data-wave": n },
          h("h3", {}, "Wave " + n + " · up to " + percent + "% · " + devs.length + " devices"),
          devs.length ? h("ul", { class: "chips" }, devs.map((d) => h("li", {
            class: "chip " + d.state, "data-device": d.device_id, "data-state": d.state,
            title: (d.step || d.state) + (d.reason ? ": " + d.reason : ""),
          }, h("b", {}, d.device_id), " ", d.state, d.step && d.step !== d.state ? " · " + d.step : "")))
            : h("p", { class: "muted" }, "no device in this wave"));
      }));
      replace(gates, h("dl", { class: "facts gates" }, Object.entries(r.gates || {}).flatMap(([k, v]) =>
        [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, v === null ? "none" : typeof v === "boolean" ? (v ? "yes" : "no") : num(v))])));
      replace(events, table([
        { label: "When", cell: (e) => h("span", { title: when(e.at) }, ago(e.at)) },
        { label: "Event", cell: (e) => e.kind },
        { label: "Device", cell: (e) => e.device_id || "" },
        { label: "Detail", cell: (e) => eventDetail(e.detail || {}) },
      ], (r.events || []).slice().reverse(), { empty: "No events yet." }));
    },
  };
  return view;
}

// The console's shell: login, hash routing, the poll loop that refreshes the current view.

import { ApiError, api, clearToken, getToken, setToken } from "./api.js";
import { replace } from "./dom.js";
import * as fleet from "./fleet.js";
import * as device from "./device.js";
import * as models from "./models.js";
import * as alerts from "./alerts.js";
import * as rollouts from "./rollouts.js";

const pollParam = Number(new URLSearchParams(location.search).get("poll"));
const POLL_MS = pollParam >= 250 ? pollParam : 2000;

const $ = (id) => document.getElementById(id);
const state = { who: null, view: null, viewKey: null, timer: null, busy: false };

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "fleet").split("/").map(decodeURIComponent);
  const [name, id] = parts;
  if (name === "device" && id) return { key: "device/" + id, module: device, params: { id } };
  if (name === "rollouts" && id) return { key: "rollout/" + id, module: rollouts, params: { id } };
  const module = { fleet, models, alerts, rollouts }[name] || fleet;
  return { key: name, module, params: {} };
}

function showLogin(message) {
  stopPolling();
  state.who = null;
  state.view = null;
  state.viewKey = null;
  $("main").hidden = true;
  $("nav").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  const err = $("login-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("token").focus();
}

async function signIn(token) {
  const who = await api("/v1/auth/whoami", { token });
  setToken(token);
  state.who = who;
  $("login").hidden = true;
  $("main").hidden = false;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = who.name + " · " + who.scope;
  document.body.dataset.scope = who.scope;
  render();
}

function ctx() {
  return {
    who: state.who,
    canOperate: state.who.allows.includes("operate"),
    notify,
    refresh: () => tick(true),
  };
}

export function notify(message, kind = "info") {
  const line = $("status-line");
  line.className = "status-line " + kind;
  line.textContent = message;
}

function render() {
  const r = route();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", r.key.startsWith(a.dataset.view) || (a.dataset.view === "rollouts" && r.key.startsWith("rollout")));
  }
  if (state.viewKey !== r.key) {
    if (state.view && state.view.destroy) state.view.destroy();
    const el = $("view");
    replace(el);
    state.view = r.module.mount(el, ctx(), r.params);
    state.viewKey = r.key;
  }
  startPolling();
}

function startPolling() {
  stopPolling();
  tick(true);
  state.timer = setInterval(() => tick(false), POLL_MS);
}

function stopPolling() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

async function tick(force) {
  if (!state.who || (state.busy && !force)) return;
  state.busy = true;
  try {
    await Promise.all([state.view && state.view.refresh(), refreshAlertCount()]);
    notify("Updated " + new Date().toLocaleTimeString() + " · refreshing every " + POLL_MS / 1000 + " s", "ok");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      clearToken();
      showLogin("Your token is no longer accepted (" + err.message + "). Sign in again.");
      return;
    }
    notify("Last update failed: " + err.message, "bad");
  } finally {
    state.busy = false;
  }
}

async function refreshAlertCount() {
  const el = $("alert-count");
  try {
    const page = await api("/v1/drift/alerts", { params: { state: "open", limit: 1 } });
    el.textContent = String(page.total);
    el.hidden = !page.total;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw err;
    el.hidden = true; // no telemetry on this hub: no count
  }
}

function init() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    const button = event.target.querySelector("button");
    button.disabled = true;
    try {
      await signIn(token);
      $("token").value = "";
    } catch (err) {
      const why = err instanceof ApiError && err.status === 401
        ? "The hub refused this token (" + err.message + "). Check it, or create one with `tandem-hub tokens create`."
        : "Could not sign in: " + err.message;
      showLogin(why);
    } finally {
      button.disabled = false;
    }
  });
  $("logout").addEventListener("click", () => {
    clearToken();
    showLogin("Signed out.");
  });
  window.addEventListener("hashchange", () => state.who && render());
  document.addEventListener("visibilitychange", () => {
    if (!state.who) return;
    if (document.hidden) stopPolling(); else startPolling();
  });
  const saved = getToken();
  if (saved) {
    signIn(saved).catch((err) => {
      clearToken();
      showLogin(err instanceof ApiError && err.status === 401 ? "Your saved token is no longer accepted; sign in again." : err.message);
    });
  } else {
    showLogin();
  }
}

init();


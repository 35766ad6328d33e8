"""Run one scenario end to end: models, environment, fleet, the event timeline, and the checks.

`run_scenario` returns a RunResult (timeline per second, summary, checks); the CLI
and the demo write it out with sim.report. Progress lines go to a callback.
"""

from __future__ import annotations

import logging
import shutil
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from tandem.cloud_hub.rollouts.controller import GatePolicy
from tandem.edge_agent.breaker import CircuitBreaker
from tandem.edge_agent.ota.machine import WatchPolicy
from tandem.hardware_profiles import load_profiles
from tandem.sim.agent_proc import AgentProcess
from tandem.sim.device import DeviceSpec
from tandem.sim.fleet import Fleet, FleetConfig, OtaSettings
from tandem.sim.environment import Environment
from tandem.sim.releases import BASE_VERSION, CLOUD_MODEL, Models, prepare
from tandem.sim.scenario import Event, Scenario
from tandem.sim.streams import Change, Dataset, DeviceStream

log = logging.getLogger(__name__)

DEFAULT_PROFILES = ("cpu-arm", "gpu-cuda", "npu-litert")
SAMPLE_S = 1.0
DRAIN_TIMEOUT_S = 30.0
MIN_DELIVERED_RATIO = 0.99  # delivered / offered requests every scenario must reach
SETTLE_TIMEOUT_S = 30.0

Progress = Callable[[str], None]


@dataclass
class RunResult:
    scenario: Scenario
    timeline: list[dict[str, Any]]
    summary: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)


def device_specs(scenario: Scenario) -> list[DeviceSpec]:
    profiles = load_profiles()
    specs, n = [], 0
    for g in scenario.devices:
        for k in range(g.count):
            conn = g.connectivity
            if conn.every_s:  # spread devices over the cycle, so they are not all offline at once
                conn = replace(conn, phase_s=(n * 0.37 * conn.every_s) % conn.every_s)
            process = k < g.agents
            specs.append(
                DeviceSpec(
                    f"{'agent' if process else 'sim'}-{g.profile}-{n:04d}",
                    profiles[g.profile],
                    g.rate_hz,
                    g.rows,
                    dict(g.tags),
                    conn,
                    g.ota,
                    seed=scenario.seed * 100_003 + n,
                    process=process,
                )
            )
            n += 1
    return specs


def changes_for(scenario: Scenario) -> Callable[[DeviceSpec], list[Change]]:
    """Which stream changes each device gets: drift events by profile and by a stable share of devices."""

    def pick(spec: DeviceSpec) -> list[Change]:
        out = []
        for i, e in enumerate(ev for ev in scenario.events if ev.kind == "drift"):
            p = e.params
            if p.get("profiles") and spec.profile.name not in p["profiles"]:
                continue
            share = float(p.get("fraction", 1.0))
            if share < 1.0 and (zlib.crc32(f"{spec.device_id}/{i}".encode()) % 10_000) / 10_000 >= share:
                continue
            until = p.get("until_s") or (e.at_s + e.for_s if e.for_s else None)
            out.append(Change(p["change"], e.at_s, float(p.get("value", 0.0)), until, tuple(p.get("classes") or ())))
        return out

    return pick


class _Timeline:
    """Applies events at their time and samples the hub once per SAMPLE_S."""

    def __init__(self, scenario: Scenario, env: Environment, fleet: Fleet, progress: Progress | None) -> None:
        self.scenario = scenario
        self.env = env
        self.fleet = fleet
        self.progress = progress
        self.pending = list(scenario.events)
        self.undo: list[tuple[float, Callable[[], None]]] = []
        self.samples: list[dict[str, Any]] = []
        self.rollouts: list[dict[str, Any]] = []
        self.outage = False
        self.log: list[str] = []

    def apply_due(self, t: float) -> None:
        for at, fn in [u for u in self.undo if u[0] <= t]:
            fn()
            self.undo.remove((at, fn))
        while self.pending and self.pending[0].at_s <= t:
            self._apply(self.pending.pop(0), t)

    def _note(self, t: float, text: str) -> None:
        self.log.append(f"t={t:5.1f}s {text}")
        if self.progress:
            self.progress(f"\r  t={t:.0f}s {text}\033[K\n")

    def _apply(self, e: Event, t: float) -> None:
        if e.kind == "outage":
            self.env.outage(True)
            self.outage = True
            self._note(t, f"hub outage begins ({e.for_s:g}s)")
            self.undo.append((e.at_s + (e.for_s or 0), lambda: self._end_outage()))
        elif e.kind == "network":
            p = {
                k: e.params[k] for k in ("latency_ms", "jitter_ms", "loss", "bandwidth_bps", "stalled") if k in e.params
            }
            self.env.network(e.params.get("target", "both"), **p)
            self._note(t, f"network faults {p}")
            if e.for_s:
                self.undo.append((e.at_s + e.for_s, self._heal_network))
        elif e.kind == "drift":
            self._note(t, f"drift injected: {e.params['change']} {e.params.get('value', e.params.get('classes'))}")
        elif e.kind == "rollout":
            self._start_rollout(e, t)

    def _heal_network(self) -> None:
        self.env.network("both", latency_ms=0.0, jitter_ms=0.0, loss=0.0, bandwidth_bps=None, stalled=False)
        self._note(self.fleet.sim_time(), "network healed")

    def _end_outage(self) -> None:
        self.env.outage(False)
        self.outage = False
        self._note(self.fleet.sim_time(), "hub outage ends")

    def _start_rollout(self, e: Event, t: float) -> None:
        model, version = self.env.register(e.params["release"])
        gates = {
            k: e.params[k]
            for k in (
                "max_fallback_rise",
                "max_failure_rate",
                "min_reporting",
                "wave_timeout_s",
                "max_latency_ratio",
                "min_devices",
            )
            if k in e.params
        }
        gates.setdefault("wave_timeout_s", 60.0)
        ids = [d.device_id for d in self.fleet.devices if d.ota is not None]
        ids += [a.device_id for a in self.fleet.external if a.spec.ota]
        r = self.env.rollouts.create(
            model, version, None, e.params.get("waves", [25, 50, 100]), GatePolicy(**gates), device_ids=ids
        )
        self.rollouts.append(
            {"rollout_id": r.rollout_id, "release": e.params["release"], "version": version, "at_s": t}
        )
        self._note(
            t,
            f"rollout {r.rollout_id} of {model} {version} ({e.params['release']}) "
            f"waves {e.params.get('waves', [25, 50, 100])} to {len(ids)} devices",
        )

    def sample(self, t: float) -> dict[str, Any]:
        tel = self.env.telemetry
        status = tel.status()
        drift: dict[str, float] = {}
        for row in status.get("signals", []):
            if row.get("value") is None:
                continue
            key = "input" if row["signal"].startswith("input:") else row["signal"]
            drift[key] = max(drift.get(key, 0.0), float(row["value"]))
        s: dict[str, Any] = {
            "t": round(t, 2),
            "hub_windows": tel.store.count_windows(),
            "sent_windows": self.fleet.sent_windows(),
            "outbox_pending": self.fleet.pending_windows(),
            "alerts_open": len(tel.store.open_alerts()),
            "drift": drift,
            "outage": self.outage,
            "breakers_open": sum(1 for d in self.fleet.devices if _breaker_open(d.fallback.breaker)),
        }
        if self.rollouts:
            r = self.env.rollouts.get(self.rollouts[-1]["rollout_id"])
            s["rollout"] = {"status": r.status, "wave": r.wave, "counts": r.counts(), "reason": r.reason}
        versions: dict[str, int] = {}
        for d in [*self.fleet.devices, *self.fleet.external]:
            versions[d.version or "none"] = versions.get(d.version or "none", 0) + 1
        s["serving"] = versions
        self.samples.append(s)
        return s


def _breaker_open(breaker: CircuitBreaker | None) -> bool:
    return breaker is not None and breaker.state != "closed"


def _line(s: dict[str, Any], fleet_row: dict[str, Any] | None, duration: float, n: int) -> str:
    f = fleet_row or {}
    p99 = f.get("latency_p99_ms")
    parts = [f"t={s['t']:4.0f}/{duration:.0f}s", f"devices={n}", f"req/s={f.get('requests', 0):4d}"]
    if s.get("offered"):
        parts.append(f"delivered={s['delivered']}/{s['offered']:.0f} offered ({s['delivered'] / s['offered']:.1%})")
    parts += [
        f"p99={p99:6.2f}ms" if p99 is not None else "p99=   -  ",
        f"fallback={100 * f.get('fallback_rate', 0.0):4.1f}%",
        f"degraded={100 * f.get('degraded_rate', 0.0):4.1f}%",
        f"windows hub={s['hub_windows']} pending={s['outbox_pending']}",
        f"alerts={s['alerts_open']}",
    ]
    if s.get("outage"):
        parts.append("HUB OUTAGE")
    if "rollout" in s:
        r = s["rollout"]
        parts.append(f"rollout={r['status']} wave={r['wave'] + 1} {r['counts']}")
    return "  ".join(parts)


def run_scenario(
    scenario: Scenario,
    workdir: Path,
    *,
    models: Models | None = None,
    data_dir: Path | None = None,
    progress: Progress | None = None,
    fleet_config: FleetConfig | None = None,
) -> RunResult:
    """Run `scenario` against a fresh hub and broker under `workdir`; the result says what happened."""
    workdir = Path(workdir).resolve()  # agent configs name paths under it; relative, they would resolve elsewhere
    workdir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda m: None)
    if models is None:
        models = prepare(
            workdir / "models", set(DEFAULT_PROFILES) | set(scenario.profiles), data_dir, say=lambda m: say(m + "\n")
        )
    data = Dataset.load(Path(scenario.data) if scenario.data else models.data_dir / "test.npz")
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = Environment(run_dir, models, scenario.drift, window_s=scenario.window_s, watch_s=scenario.watch_s)
    fleet: Fleet | None = None
    agents: list[AgentProcess] = []
    try:
        env.start()
        hub = env.hub
        assert hub is not None, "the environment did not start its hub"
        specs = device_specs(scenario)
        for spec in specs:
            hub.devices.register(
                spec.device_id,
                spec.profile.name,
                "tandem-sim",
                spec.tags,
                model_name="digits",
                model_version=BASE_VERSION,
            )
        ota = None
        if any(s.ota for s in specs):
            ota = OtaSettings(
                env.device_token,
                hub.key.public_pem,
                WatchPolicy(watch_s=scenario.watch_s, min_requests=10, max_fallback_rise=0.3, max_latency_ratio=3.0),
                env.mqtt_url,
            )
        config = fleet_config or FleetConfig()
        config = replace(
            config,
            window_s=scenario.window_s,
            threshold=scenario.threshold,
            fallback_deadline_ms=scenario.fallback_deadline_ms,
            hub_model=CLOUD_MODEL,
        )
        changes = changes_for(scenario)
        agents = [
            AgentProcess(
                s,
                DeviceStream(data, changes(s), seed=s.seed),
                run_dir / "agents" / s.device_id,
                models.edge,
                hub_grpc=env.grpc_url,
                mqtt_url=env.mqtt_url,
                hub_model=CLOUD_MODEL,
                window_s=scenario.window_s,
                threshold=scenario.threshold,
                deadline_ms=scenario.fallback_deadline_ms,
                ota=ota,
                trusted_pem=models.publisher_pem,
            ).launch()
            for s in specs
            if s.process
        ]
        fleet = Fleet(
            [s for s in specs if not s.process],
            data=data,
            changes=changes,
            hub_grpc=env.grpc_url,
            mqtt_url=env.mqtt_url,
            workdir=run_dir / "devices",
            config=config,
            ota=ota,
            external=agents,
        )
        fleet.start(models.edge)
        for a in agents:
            a.wait_ready()
        if not fleet.wait_connected(20):
            log.warning("not every device connected within 20 s; running anyway")
        timeline = _Timeline(scenario, env, fleet, progress)
        wall_t0 = time.time()
        fleet.start_serving()
        next_sample = SAMPLE_S
        while True:
            t = fleet.sim_time()
            if t >= scenario.duration_s:
                break
            timeline.apply_due(t)
            if t >= next_sample:
                s = timeline.sample(t)
                rows = fleet.recorder.rows()
                last = rows[-2] if len(rows) >= 2 else (rows[-1] if rows else None)
                delivered = fleet.delivered()
                s["offered"], s["delivered"] = delivered + fleet.backlog(t), delivered
                say("\r" + _line(s, last, scenario.duration_s, len(specs)) + "\033[K")
                next_sample += SAMPLE_S
            time.sleep(0.05)
        backlog = fleet.backlog(scenario.duration_s)
        timeline.apply_due(float("inf"))  # heal everything still open
        fleet.stop_serving()
        say("\n")
        for a in agents:
            a.stop()  # SIGTERM: the agent closes its window and drains its outbox
        drained = fleet.wait_drained(DRAIN_TIMEOUT_S)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while env.telemetry.store.count_windows() < _sent(fleet) and time.monotonic() < deadline:
            time.sleep(0.1)
        if timeline.rollouts:
            _settle(env, fleet, timeline.rollouts[-1]["rollout_id"])
        env.telemetry.evaluate(time.time())
        final = timeline.sample(fleet.sim_time())
        final["sent_windows"] = _sent(fleet)
        final["outbox_pending"] += sum(a.pending() for a in agents)
        summary = _summary(scenario, env, fleet, timeline, final, wall_t0, drained, models)
        summary["offered"] = round(summary["requests"] + backlog, 1)
        summary["delivered_ratio"] = summary["requests"] / summary["offered"] if summary["offered"] else 1.0
        checks = _checks(scenario, summary)
        timeline_rows = _merge(fleet.recorder.rows(), timeline.samples)
        return RunResult(scenario, timeline_rows, summary, checks)
    finally:
        for a in agents:
            a.stop()
        if fleet is not None:
            fleet.close()
        env.stop()


def _sent(fleet: Fleet) -> int:
    """Windows numbered by every device: virtual ones, and agent processes (read from their outboxes)."""
    return fleet.sent_windows() + sum(a.sent() for a in fleet.external)


def _settle(env: Environment, fleet: Fleet, rollout_id: str) -> None:
    """Wait until the rollout is final and no device is mid-update."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    busy = ("sent", "downloading", "verifying", "staged", "self_test", "switched", "watching", "rolling_back")
    while time.monotonic() < deadline:
        r = env.rollouts.get(rollout_id)
        if r.status not in ("running", "paused") and not any(d.state in busy for d in r.devices.values()):
            return
        time.sleep(0.2)


def _summary(
    scenario: Scenario,
    env: Environment,
    fleet: Fleet,
    timeline: _Timeline,
    final: dict[str, Any],
    wall_t0: float,
    drained: bool,
    models: Models,
) -> dict[str, Any]:
    alerts, _ = env.telemetry.store.alerts(limit=200)
    drift_at = min((e.at_s for e in scenario.events if e.kind == "drift"), default=None)
    first_alert = min((a["opened_at"] - wall_t0 for a in alerts), default=None)
    fleet_total = fleet.recorder.summary()
    out: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "devices": len(fleet.devices) + len(fleet.external),
        "duration_s": scenario.duration_s,
        "window_s": scenario.window_s,
        "profiles": {g.profile: g.count for g in scenario.devices},
        "variants": {d.profile.name: d.handle.variant.id for d in fleet.devices if d.handle is not None},
        "refused": {d.device_id: d.refused for d in fleet.devices if d.refused},
        "requests": fleet_total["requests"],
        "by_source": {k: fleet_total[k] for k in ("edge", "cloud", "edge_degraded", "error")},
        "fallback_rate": fleet_total["fallback_rate"],
        "degraded_rate": fleet_total["degraded_rate"],
        "accuracy": fleet_total["accuracy"],
        "latency_p50_ms": fleet_total["latency_p50_ms"],
        "latency_p99_ms": fleet_total["latency_p99_ms"],
        "max_scheduling_lag_s": fleet_total["max_lag_s"],
        "telemetry": {
            "sent": final["sent_windows"],
            "hub": final["hub_windows"],
            "pending": final["outbox_pending"],
            "drained": drained,
        },
        "alerts": [
            {
                "signal": a["signal"],
                "profile": a["cohort"].get("profile"),
                "version": a["model_version"],
                "opened_s": round(a["opened_at"] - wall_t0, 1),
                "state": a["state"],
            }
            for a in alerts
        ],
        "first_alert_s": None if first_alert is None else round(first_alert, 1),
        "drift_at_s": drift_at,
        "events": timeline.log,
        "serving": final["serving"],
        "agent_processes": [
            {
                "device_id": a.device_id,
                "profile": a.profile.name,
                "answers": a.answers,
                "version": a.version,
                "windows_sent": a.sent(),
                "windows_pending": a.pending(),
            }
            for a in fleet.external
        ],
        "sessions": [
            {
                "variant": s.model.variant.id,
                "version": s.model.version,
                "users": s.users,
                "host_ms_per_row": round(s.host_ms_per_row, 5),
                "batches": s.batcher.stats().batches,
                "rows": s.batcher.stats().rows,
            }
            for s in fleet.pool.sessions()
        ],
        "models": str(models.root),
    }
    if timeline.rollouts:
        info = timeline.rollouts[-1]
        r = env.rollouts.get(info["rollout_id"])
        ota_devices = [d for d in fleet.devices if d.ota is not None]
        ota_agents = [a for a in fleet.external if a.spec.ota]  # their version: the one their last answer named
        everyone = [*ota_devices, *ota_agents]
        out["rollout"] = {
            **info,
            "status": r.status,
            "reason": r.reason,
            "wave": r.wave,
            "counts": r.counts(),
            "devices_on_new": sum(1 for d in everyone if d.version == info["version"]),
            "devices_on_base": sum(1 for d in everyone if d.version == BASE_VERSION),
            "store_active": sorted({d.ota.store.active_version for d in ota_devices}),
            "ota_devices": len(everyone),
        }
    return out


def _checks(scenario: Scenario, s: dict[str, Any]) -> list[dict[str, Any]]:
    ex = scenario.expect
    checks = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})

    if "offered" in s:  # every scenario: a fleet that fell behind its request rate did not run the scenario
        check(
            "requests delivered",
            s["delivered_ratio"] >= MIN_DELIVERED_RATIO,
            f"delivered {s['requests']} of {s['offered']:.0f} offered requests ({s['delivered_ratio']:.1%}; "
            f"at least {MIN_DELIVERED_RATIO:.0%} needed: the host could not keep up with the fleet's rate)",
        )
    tel = s["telemetry"]
    if ex.telemetry_complete:
        check(
            "telemetry complete",
            tel["hub"] == tel["sent"] and tel["pending"] == 0,
            f"hub stored {tel['hub']} windows; devices sent {tel['sent']}; {tel['pending']} still in outboxes",
        )
    if ex.no_alert:
        check(
            "no drift alert",
            not s["alerts"],
            f"{len(s['alerts'])} alert(s): " + ", ".join(f"{a['signal']}@{a['opened_s']}s" for a in s["alerts"][:5]),
        )
    if ex.alert_within_windows is not None:
        at, first = s["drift_at_s"], s["first_alert_s"]
        limit = at + ex.alert_within_windows * scenario.window_s
        early = [a for a in s["alerts"] if a["opened_s"] < at]
        ok = first is not None and not early and first <= limit
        detail = (
            "no alert was raised"
            if first is None
            else f"drift at {at:g}s, first alert at {first:g}s ({(first - at) / scenario.window_s:.1f} windows; "
            f"limit {ex.alert_within_windows})" + (f"; {len(early)} alert(s) before the drift" if early else "")
        )
        check("drift alerted in time", ok, detail)
    if ex.rollout is not None:
        r = s.get("rollout") or {}
        if ex.rollout == "completed":
            ok = r.get("status") == "completed" and r.get("devices_on_new") == r.get("ota_devices")
            detail = f"rollout {r.get('status')}; {r.get('devices_on_new')}/{r.get('ota_devices')} devices on {r.get('version')}"
            if r.get("reason"):  # a halted or failed rollout says why (the wave and the device that stopped it)
                detail += f" ({r['reason']})"
        else:
            ok = (
                r.get("status") == "halted"
                and r.get("devices_on_base") == r.get("ota_devices")
                and r.get("store_active") == [BASE_VERSION]
            )
            detail = (
                f"rollout {r.get('status')} ({r.get('reason')}); {r.get('devices_on_base')}/{r.get('ota_devices')} "
                f"devices back on {BASE_VERSION}"
            )
        check(f"rollout {ex.rollout}", ok, detail)
    if ex.max_p99_ms is not None:
        p99 = s["latency_p99_ms"]
        check("p99 latency", p99 is not None and p99 <= ex.max_p99_ms, f"p99 {p99} ms, limit {ex.max_p99_ms} ms")
    return checks


def _merge(fleet_rows: list[dict[str, Any]], samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_t = {int(r["t"]): dict(r) for r in fleet_rows}
    for s in samples:
        row = by_t.setdefault(int(s["t"]), {"t": float(int(s["t"]))})
        row.update({k: v for k, v in s.items() if k != "t"})
    return [by_t[k] for k in sorted(by_t)]

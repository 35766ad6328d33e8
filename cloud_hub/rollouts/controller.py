"""The rollout controller: a pure state machine over one rollout's waves and devices.

Functions take the rollout, an input (a device's status, a tick of the clock, an
operator's request) and `now`, update the rollout and return what to do: commands to
send and events to record. No I/O, no clock of its own: the service shell does that.

Waves are cumulative percentages of the selected devices (5, 25, 100). A wave's gate
opens the next wave once enough of its devices reported and the figures pass; any
failure beyond the allowed rate halts at once, and with `auto_rollback` the devices
that took the new version are told to go back. With a control cohort (`control_fraction`
or `control_devices`), those devices are set aside before the waves, are never sent a
command, and each wave must also match them on ML quality over the same span
(`quality.verdict` on figures the shell fetches from telemetry).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any, Literal

from tandem.cloud_hub.rollouts.evidence import RateSides, fallback_rise_breach
from tandem.cloud_hub.rollouts.quality import Comparison, QualityQuery, verdict

DeviceState = Literal[
    "pending", "sent", "in_progress", "committed", "failed", "rejected", "rolled_back", "rollback_sent"
]
Status = Literal["running", "paused", "halted", "completed", "aborted", "rolled_back"]
ACTIVE_STATUSES = ("running", "paused")
DEVICE_TERMINAL = ("committed", "failed", "rejected", "rolled_back")
DEVICE_FAILURES = ("failed", "rejected", "rolled_back")


class RolloutError(ValueError):
    """A request does not fit the rollout's state (e.g. resuming a completed rollout)."""


@dataclass(frozen=True)
class GatePolicy:
    """When a wave may open the next one. Rates are fractions 0..1."""

    max_failure_rate: float = 0.0  # failed, rejected or self-rolled-back devices over the opened devices
    max_fallback_rise: float = 0.10  # mean rise of committed devices' fallback rate over their previous version,
    # halting only on evidence that it is above this (rollouts.evidence), not on a few devices' noise
    max_latency_ratio: float = 2.0  # median of committed devices' p95 over their previous version's
    max_drift_alerts: int = 0  # open drift alerts on the new version
    min_reporting: float = 0.8  # share of opened devices with a final answer before the gate decides
    min_devices: int = 1  # and at least this many (or all opened, if fewer)
    wave_timeout_s: float | None = 900.0  # halt if a wave has not reported enough by then; None: wait
    auto_rollback: bool = True  # on a halt, tell devices that took the version to go back
    # The control cohort and the quality gates against it (off while both control settings are 0).
    control_fraction: float = 0.0  # share of the selected devices kept on their current version
    control_devices: int = 0  # or at least this many
    min_quality_requests: int = 200  # requests in each cohort over the span before quality decides
    max_fallback_rise_vs_control: float = 0.10
    max_error_rise_vs_control: float = 0.05
    max_confidence_drop_vs_control: float = 0.10  # mean top-class confidence
    max_confidence_psi_vs_control: float | None = 0.25  # confidence histogram shift; None: not gated
    max_class_psi_vs_control: float | None = 0.25  # predicted-class mix shift; None: not gated
    max_agreement_drop_vs_control: float | None = 0.05  # shadow top-1 agreement with the cloud; None: not gated
    min_shadow_samples: int = 100  # shadow samples in each cohort before the agreement gate judges

    def __post_init__(self) -> None:
        for name in (
            "max_failure_rate",
            "max_fallback_rise",
            "min_reporting",
            "max_fallback_rise_vs_control",
            "max_error_rise_vs_control",
            "max_confidence_drop_vs_control",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RolloutError(f"gate {name}: {getattr(self, name)!r} must be between 0 and 1")
        if self.max_latency_ratio <= 0 or self.max_drift_alerts < 0 or self.min_devices < 1:
            raise RolloutError("gate: max_latency_ratio must be > 0, max_drift_alerts >= 0, min_devices >= 1")
        if not 0.0 <= self.control_fraction < 1.0 or self.control_devices < 0 or self.min_quality_requests < 1:
            raise RolloutError(
                "gate: control_fraction must be in [0, 1), control_devices >= 0, min_quality_requests >= 1"
            )
        for name in ("max_confidence_psi_vs_control", "max_class_psi_vs_control"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise RolloutError(f"gate {name}: must be >= 0 (or None to skip it)")
        drop = self.max_agreement_drop_vs_control
        if drop is not None and not 0.0 <= drop <= 1.0:
            raise RolloutError(
                f"gate max_agreement_drop_vs_control: {drop!r} must be between 0 and 1 (or None to skip it)"
            )
        if self.min_shadow_samples < 1:
            raise RolloutError(f"gate min_shadow_samples: {self.min_shadow_samples!r} must be >= 1")
        if self.wave_timeout_s is not None and self.wave_timeout_s <= 0:
            raise RolloutError("gate wave_timeout_s: must be positive (or None to wait)")


@dataclass(frozen=True)
class Send:
    device_id: str
    action: Literal["install", "rollback"]


@dataclass(frozen=True)
class Event:
    kind: str
    detail: dict[str, Any]
    device_id: str | None = None


@dataclass
class DeviceProgress:
    device_id: str
    wave: int
    state: DeviceState = "pending"
    step: str | None = None
    reason: str = ""
    sent_at: float | None = None
    updated_at: float | None = None
    health: dict[str, Any] = field(default_factory=dict)
    rollback_requested: bool = False


@dataclass
class Rollout:
    rollout_id: str
    model: str
    version: str
    waves: list[int]
    gates: GatePolicy
    created_at: float
    devices: dict[str, DeviceProgress]
    status: Status = "running"
    wave: int = 0
    wave_opened_at: float = 0.0
    reason: str = ""
    updated_at: float = 0.0
    control: list[str] = field(default_factory=list)  # kept on their version; never sent a command
    wave_clock_from: float = 0.0  # the wave's timeout counts from max(wave_opened_at, this): a hub restart resets it
    quality: dict[str, Any] = field(default_factory=dict)  # the last quality figures the gate judged

    def opened(self) -> list[DeviceProgress]:
        return [d for d in self.devices.values() if d.wave <= self.wave]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.devices.values():
            out[d.state] = out.get(d.state, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["devices"] = list(data["devices"].values())
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Rollout":
        data = dict(data)
        data["gates"] = GatePolicy(**data["gates"])
        data["devices"] = {d["device_id"]: DeviceProgress(**d) for d in data["devices"]}
        return cls(**data)


def parse_waves(waves: list[int] | str) -> list[int]:
    """'5,25,100' -> [5, 25, 100]: increasing percentages ending at 100."""
    items = [int(w) for w in waves.split(",")] if isinstance(waves, str) else [int(w) for w in waves]
    if not items or items[-1] != 100 or any(not 0 < w <= 100 for w in items) or items != sorted(set(items)):
        raise RolloutError(f"waves {waves!r}: expected increasing percentages ending at 100, e.g. 5,25,100")
    return items


def wave_cutoffs(n: int, waves: list[int]) -> list[int]:
    """Cumulative device counts per wave: at least one device in the first, every device in the last."""
    cut = [min(n, max(1, math.ceil(n * w / 100))) for w in waves]
    for i in range(1, len(cut)):
        cut[i] = max(cut[i], cut[i - 1])
    return cut


def control_size(n: int, gates: GatePolicy) -> int:
    """How many of `n` selected devices form the control cohort (at least one when asked for)."""
    if gates.control_fraction <= 0 and gates.control_devices <= 0:
        return 0
    k = max(gates.control_devices, math.ceil(gates.control_fraction * n))
    if k >= n:
        raise RolloutError(
            f"control cohort of {k} would leave none of the {n} selected devices to roll out to; "
            "lower control_fraction / control_devices or select more devices"
        )
    return k


def new_rollout(
    rollout_id: str,
    model: str,
    version: str,
    device_ids: list[str],
    waves: list[int],
    gates: GatePolicy,
    now: float,
    seed: int | None = None,
) -> tuple[Rollout, list[Send], list[Event]]:
    """Set the control cohort aside, assign the rest to waves (one shuffle seeded by the rollout id), open wave 1."""
    if not device_ids:
        raise RolloutError("no devices match the selection; nothing to roll out")
    waves = parse_waves(waves)
    order = sorted(set(device_ids))
    random.Random(seed if seed is not None else rollout_id).shuffle(order)
    k = control_size(len(order), gates)
    control, order = sorted(order[len(order) - k :]), order[: len(order) - k]
    cut = wave_cutoffs(len(order), waves)
    devices: dict[str, DeviceProgress] = {}
    for i, dev in enumerate(order):
        devices[dev] = DeviceProgress(dev, next(w for w, c in enumerate(cut) if i < c))
    r = Rollout(
        rollout_id, model, version, waves, gates, now, devices, wave_opened_at=now, updated_at=now, control=control
    )
    events = [Event("created", {"devices": len(order), "waves": waves, "wave_sizes": cut, "control": len(control)})]
    return r, _send_wave(r, now, events), events


def _send_wave(r: Rollout, now: float, events: list[Event]) -> list[Send]:
    sends = []
    for d in r.opened():
        if d.state == "pending":
            d.state, d.sent_at = "sent", now
            sends.append(Send(d.device_id, "install"))
    events.append(Event("wave_opened", {"wave": r.wave + 1, "percent": r.waves[r.wave], "sent": len(sends)}))
    return sends


def on_status(
    r: Rollout, device_id: str, step: str, result: str, reason: str, health: dict[str, Any], now: float
) -> tuple[list[Send], list[Event]]:
    """A device reported a step of this rollout; a failure may halt it at once."""
    d = r.devices.get(device_id)
    if d is None:
        return [], [Event("unknown_device", {"step": step}, device_id)]
    if step == "rejected" and d.state in ("committed", "failed", "rolled_back"):
        # A catch-up resend after a restart is refused by anti-rollback; the device's earlier,
        # more precise outcome for this version stands.
        return [], [
            Event("device_step", {"step": step, "result": result, "reason": reason, "kept": d.state}, device_id)
        ]
    d.step, d.reason, d.updated_at = step, reason, now
    if health:
        d.health = health
    if d.rollback_requested:
        if step == "rolled_back":
            d.state = "rolled_back"
        return [], [Event("device_step", {"step": step, "result": result, "reason": reason}, device_id)]
    if step in DEVICE_TERMINAL or step == "rejected":
        d.state = step  # type: ignore[assignment]
    elif d.state in ("pending", "sent", "in_progress"):
        d.state = "in_progress"
    r.updated_at = now
    events = [Event("device_step", {"step": step, "result": result, "reason": reason}, device_id)]
    sends: list[Send] = []
    if r.status in ACTIVE_STATUSES:
        failures = [x for x in r.opened() if x.state in DEVICE_FAILURES]
        if len(failures) > r.gates.max_failure_rate * len(r.opened()):
            sends += halt(
                r,
                f"wave {r.wave + 1}: {len(failures)} of {len(r.opened())} devices failed "
                f"(last: {device_id}: {step}: {reason})",
                now,
                events,
            )
    return sends, events


def has_figures(d: DeviceProgress) -> bool:
    """A commit counts toward a gate only with the watch figures it was made on (a repeated
    "already active" answer from a device without them says nothing about health)."""
    return d.state != "committed" or isinstance((d.health or {}).get("current"), dict)


def _reported(r: Rollout) -> tuple[list[DeviceProgress], int]:
    """Devices that reported an outcome the gate can judge, and how many the gate needs: never passed without data."""
    opened = r.opened()
    needed = max(math.ceil(r.gates.min_reporting * len(opened)), min(r.gates.min_devices, len(opened)))
    return [d for d in opened if d.state in DEVICE_TERMINAL and has_figures(d)], needed


def quality_query(r: Rollout) -> QualityQuery | None:
    """The windows the quality gate needs now, or None (no control cohort, not running, wave still reporting)."""
    if not r.control or r.status != "running":
        return None
    reported, needed = _reported(r)
    if len(reported) < needed:
        return None
    wave = tuple(sorted(d.device_id for d in r.opened() if d.state == "committed"))
    return QualityQuery(wave, tuple(r.control), r.version, r.wave_opened_at)


def tick(
    r: Rollout, now: float, drift_alerts: int = 0, quality: Comparison | None = None
) -> tuple[list[Send], list[Event]]:
    """Evaluate the open wave's gate: open the next wave, complete, halt, or keep waiting.

    With a control cohort, `quality` is the wave-vs-control comparison for `quality_query(r)`;
    until it has enough requests the wave waits (within wave_timeout_s).
    """
    events: list[Event] = []
    if r.status != "running":
        return [], events
    opened = r.opened()
    reported, needed = _reported(r)
    timed_out = (
        r.gates.wave_timeout_s is not None and now - max(r.wave_opened_at, r.wave_clock_from) > r.gates.wave_timeout_s
    )
    if len(reported) < needed:
        if timed_out:
            blind = sum(1 for d in opened if not has_figures(d))
            return halt(
                r,
                f"wave {r.wave + 1}: only {len(reported)} of {len(opened)} devices reported within "
                f"{r.gates.wave_timeout_s:g}s (need {needed})"
                + (f"; {blind} committed without health figures" if blind else ""),
                now,
                events,
            ), events
        return [], events
    problem = gate_problem(r, drift_alerts)
    if problem:
        return halt(r, f"wave {r.wave + 1}: {problem}", now, events), events
    detail: dict[str, Any] = {"wave": r.wave + 1, "reported": len(reported), "opened": len(opened)}
    if r.control:
        decision, why = verdict(quality, r.gates)
        if quality is not None:
            r.quality = {"wave": r.wave + 1, **quality.as_dict()}
        if decision == "wait":
            if timed_out:
                return halt(r, f"wave {r.wave + 1}: {why} within {r.gates.wave_timeout_s:g}s", now, events), events
            return [], events
        if decision == "halt":
            events.append(Event("quality_gate", {"verdict": "halt", "reason": why, **r.quality}))
            return halt(r, f"wave {r.wave + 1}: {why}", now, events), events
        detail["quality"] = r.quality
    events.append(Event("gate_passed", detail))
    if r.wave + 1 >= len(r.waves):
        r.status, r.updated_at = "completed", now
        events.append(Event("completed", {"devices": len(r.devices), "control": len(r.control)}))
        return [], events
    r.wave += 1
    r.wave_opened_at = r.updated_at = now
    return _send_wave(r, now, events), events


def resume_after_restart(r: Rollout, now: float) -> None:
    """The hub was down: its own downtime must not time a wave out (a crash neither fails nor passes a wave).
    The wave's data window (wave_opened_at) stays; only its timeout starts again from now."""
    if r.status == "running":
        r.wave_clock_from = now


def clock_stepped(r: Rollout, step_s: float) -> None:
    """The hub's wall clock was stepped by `step_s` (NTP, a resumed VM): the wave keeps its elapsed time.

    Its timeout is a duration: unshifted, a step forward past wave_timeout_s halts a healthy wave (and
    rolls it back), a step back adds the step to it. After a step back, windows are received at times
    before wave_opened_at: the data window moves back with the clock so they still count."""
    if r.status not in ACTIVE_STATUSES:
        return
    r.wave_clock_from = max(r.wave_opened_at, r.wave_clock_from) + step_s
    if step_s < 0:
        r.wave_opened_at += step_s


MIN_LATENCY_REQUESTS = 20  # per side, as the device's own watch (WatchPolicy.min_requests): fewer say nothing


def _slowdown(base: dict[str, Any], cur: dict[str, Any]) -> tuple[float, bool] | None:
    """How much slower one device found the new version, and whether a p50 took part; None on too few requests.

    The device's own rule: its p95 ratio, or where both sides have a p50 the smaller of the p95 and p50
    ratios, so a tail stretched by load on the host (a busy 3-s watch) is not a slower model.
    """
    if min(base.get("requests") or 0, cur.get("requests") or 0) < MIN_LATENCY_REQUESTS:
        return None
    if not base.get("latency_p95_ms") or cur.get("latency_p95_ms") is None:
        return None
    ratio = cur["latency_p95_ms"] / base["latency_p95_ms"]
    if base.get("latency_p50_ms") and cur.get("latency_p50_ms") is not None:
        return min(ratio, cur["latency_p50_ms"] / base["latency_p50_ms"]), True
    return ratio, False


def gate_problem(r: Rollout, drift_alerts: int) -> str | None:
    """The first gate figure out of bounds for the opened devices, or None."""
    g = r.gates
    committed = [d for d in r.opened() if d.state == "committed"]
    sides: list[RateSides] = []
    ratios = []
    with_p50 = False
    for d in committed:
        base, cur = d.health.get("baseline") or {}, d.health.get("current") or {}
        figures = RateSides.of(d.health)
        if figures is not None:
            sides.append(figures)
        slowdown = _slowdown(base, cur)
        if slowdown is not None:
            ratios.append(slowdown[0])
            with_p50 = with_p50 or slowdown[1]
    # the mean rise must be shown to exceed the limit: a few devices' short watches are noisy (rollouts.evidence)
    rise = fallback_rise_breach(sides, g.max_fallback_rise)
    if rise:
        return rise
    if ratios and median(ratios) > g.max_latency_ratio:
        what = "latency (p95 and p50 alike)" if with_p50 else "p95 latency"
        return f"{what} is {median(ratios):.2f}x the previous version's, above {g.max_latency_ratio:.2f}x"
    if drift_alerts > g.max_drift_alerts:
        return f"{drift_alerts} open drift alert(s) on {r.model} {r.version}, allowed {g.max_drift_alerts}"
    return None


def halt(r: Rollout, reason: str, now: float, events: list[Event]) -> list[Send]:
    """Stop opening waves; by policy, roll back the devices that took (or may take) the version."""
    r.status, r.reason, r.updated_at = "halted", reason, now
    events.append(Event("halted", {"reason": reason, "wave": r.wave + 1}))
    return _roll_back_devices(r, now, events) if r.gates.auto_rollback else []


def _roll_back_devices(r: Rollout, now: float, events: list[Event]) -> list[Send]:
    sends = []
    for d in r.devices.values():
        if d.state in ("sent", "in_progress", "committed") and not d.rollback_requested:
            d.rollback_requested, d.state, d.sent_at = True, "rollback_sent", now
            sends.append(Send(d.device_id, "rollback"))
    events.append(Event("rollback_sent", {"devices": len(sends)}))
    return sends


def pause(r: Rollout, now: float) -> list[Event]:
    if r.status != "running":
        raise RolloutError(f"rollout {r.rollout_id} is {r.status}; only a running rollout can be paused")
    r.status, r.updated_at = "paused", now
    return [Event("paused", {})]


def resume(r: Rollout, now: float) -> list[Event]:
    if r.status not in ("paused", "halted"):
        raise RolloutError(f"rollout {r.rollout_id} is {r.status}; only a paused or halted rollout can be resumed")
    if r.status == "halted" and any(d.rollback_requested for d in r.devices.values()):
        raise RolloutError(f"rollout {r.rollout_id} was rolled back; start a new rollout (with a higher version)")
    r.status, r.reason, r.updated_at = "running", "", now
    r.wave_opened_at = now  # the wave's timeout starts again
    return [Event("resumed", {})]


def abort(r: Rollout, now: float) -> list[Event]:
    """Stop for good; devices keep whatever they run now."""
    if r.status in ("aborted", "rolled_back"):
        raise RolloutError(f"rollout {r.rollout_id} is already {r.status}")
    r.status, r.updated_at = "aborted", now
    for d in r.devices.values():
        if d.state == "pending":
            d.reason = "rollout aborted before this device's wave"
    return [Event("aborted", {})]


def rollback(r: Rollout, now: float) -> tuple[list[Send], list[Event]]:
    """The operator asks every device that took the version to go back."""
    if r.status == "rolled_back":
        raise RolloutError(f"rollout {r.rollout_id} is already rolled back")
    events: list[Event] = []
    sends = _roll_back_devices(r, now, events)
    r.status, r.updated_at = "rolled_back", now
    events.append(Event("rolled_back", {"by": "operator"}))
    return sends, events


def catch_up(r: Rollout) -> list[Send]:
    """A device came back online: repeat what it has not answered yet."""
    return [
        Send(d.device_id, "rollback" if d.rollback_requested else "install")
        for d in r.devices.values()
        if d.state in ("sent", "in_progress", "rollback_sent")
        and (r.status in ("running", "completed") or d.rollback_requested)
    ]


def catch_up_device(r: Rollout, device_id: str) -> list[Send]:
    return [s for s in catch_up(r) if s.device_id == device_id]

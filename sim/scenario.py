"""Scenario files (sim/scenarios/*.yaml): validated into dataclasses, errors name the file and key.

A scenario is a fleet (groups of devices per profile), a duration, timed events
(drift, hub outage, network faults, rollouts) and the outcome it expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from tandem.hardware_profiles import ProfileError, load_profiles
from tandem.sim.emulation import Connectivity
from tandem.sim.streams import CHANGE_KINDS

SCENARIO_DIR = Path(__file__).parent / "scenarios"
EVENT_KINDS = ("drift", "outage", "network", "rollout")
RELEASE_KINDS = ("good", "bad", "selftest_fail")
ROLLOUT_OUTCOMES = ("completed", "halted")


class ScenarioError(ValueError):
    """A scenario file is malformed; the message reads `FILE: key: problem`."""


@dataclass(frozen=True)
class DeviceGroup:
    profile: str
    count: int
    rate_hz: float = 2.0
    rows: int = 1
    tags: dict[str, str] = field(default_factory=dict)
    connectivity: Connectivity = field(default_factory=Connectivity)
    ota: bool = False
    agents: int = 0  # how many of `count` run as real tandem-agent processes


@dataclass(frozen=True)
class Event:
    at_s: float
    kind: str
    for_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftSettings:
    """The hub's drift engine for this run (short spans so a scenario alerts in seconds, not minutes)."""

    span_s: float = 10.0
    baseline_s: float = 30.0
    min_samples: int = 300
    min_requests: int = 50
    open_above: float = 0.5
    close_below: float = 0.2
    k_open: int = 3
    eval_interval_s: float = 1.0
    rate_open_above: float = 0.10  # fallback- and error-rate rises over the baseline span
    rate_close_below: float = 0.05


@dataclass(frozen=True)
class Expect:
    alert_within_windows: int | None = None  # after the first drift event
    no_alert: bool = False
    rollout: str | None = None  # completed or halted
    telemetry_complete: bool = True  # the hub stored every window the devices sent
    max_p99_ms: float | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    devices: tuple[DeviceGroup, ...]
    events: tuple[Event, ...] = ()
    window_s: float = 1.0
    seed: int = 0
    data: str | None = None  # .npz with x (and y); None: the digits test split
    threshold: float = 0.8
    fallback_deadline_ms: float = 200.0
    watch_s: float = 3.0  # OTA health watch on devices
    drift: DriftSettings = field(default_factory=DriftSettings)
    expect: Expect = field(default_factory=Expect)
    source: str = ""

    @property
    def device_count(self) -> int:
        return sum(g.count for g in self.devices)

    @property
    def profiles(self) -> list[str]:
        return sorted({g.profile for g in self.devices})

    def scaled(self, devices: int | None = None, duration_s: float | None = None) -> "Scenario":
        """The same story with `devices` in total (groups kept in proportion, each at least 1) and/or
        `duration_s` (event times scaled with it)."""
        out = self
        if devices is not None:
            if devices < len(self.devices):
                raise ScenarioError(
                    f"--devices {devices}: this scenario has {len(self.devices)} device groups; use at least that many"
                )
            total = self.device_count
            counts = [max(1, math.floor(g.count * devices / total)) for g in self.devices]
            i = 0
            while sum(counts) < devices:
                counts[i % len(counts)] += 1
                i += 1
            while sum(counts) > devices:
                j = max(range(len(counts)), key=lambda k: counts[k])
                counts[j] -= 1
            out = replace(
                out, devices=tuple(replace(g, count=c, agents=min(g.agents, c)) for g, c in zip(self.devices, counts))
            )
        if duration_s is not None:
            if duration_s <= 0:
                raise ScenarioError(f"--duration {duration_s}: must be positive")
            k = duration_s / self.duration_s
            out = replace(
                out,
                duration_s=duration_s,
                events=tuple(
                    replace(e, at_s=e.at_s * k, for_s=None if e.for_s is None else e.for_s * k) for e in out.events
                ),
            )
        return out


# -- parsing -------------------------------------------------------------------------------


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {key}: {problem}")

    def mapping(self, data: Any, key: str, known: set[str]) -> Mapping[str, Any]:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise self.fail(key, f"expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise self.fail(
                f"{key}.{unknown[0]}" if key else unknown[0], f"unknown key (known: {', '.join(sorted(known))})"
            )
        return data

    def number(
        self,
        data: Mapping[str, Any],
        key: str,
        where: str,
        default: Any = ...,
        *,
        minimum: float = 0.0,
        strict: bool = False,
        integer: bool = False,
    ) -> Any:
        if key not in data or data[key] is None:
            if default is ...:
                raise self.fail(f"{where}{key}", "required")
            return default
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            raise self.fail(f"{where}{key}", f"expected {'an integer' if integer else 'a number'}, got {v!r}")
        if v < minimum or (strict and v == minimum):
            raise self.fail(f"{where}{key}", f"must be {'>' if strict else '>='} {minimum:g}, got {v!r}")
        return v


def parse_scenario(data: Any, source: str = "<memory>") -> Scenario:
    r = _Reader(source)
    top = r.mapping(
        data,
        "",
        {
            "name",
            "description",
            "duration_s",
            "devices",
            "events",
            "window_s",
            "seed",
            "data",
            "threshold",
            "fallback_deadline_ms",
            "watch_s",
            "drift",
            "expect",
        },
    )
    name = top.get("name")
    if not isinstance(name, str) or not name:
        raise r.fail("name", "required: a short name for the scenario")
    duration = r.number(top, "duration_s", "", strict=True)
    try:
        known_profiles = set(load_profiles())
    except ProfileError as exc:
        raise r.fail("devices", f"cannot load hardware profiles: {exc}") from exc

    raw_devices = top.get("devices")
    if not isinstance(raw_devices, list) or not raw_devices:
        got = "" if raw_devices is None else f", got {raw_devices!r}"
        raise r.fail("devices", f"required: a non-empty list of device groups{got}")
    groups = []
    for i, item in enumerate(raw_devices):
        w = f"devices[{i}]."
        g = r.mapping(
            item, f"devices[{i}]", {"profile", "count", "rate_hz", "rows", "tags", "connectivity", "ota", "agents"}
        )
        profile = g.get("profile")
        if profile not in known_profiles:
            raise r.fail(w + "profile", f"{profile!r} is not a known profile ({', '.join(sorted(known_profiles))})")
        tags = g.get("tags") or {}
        if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise r.fail(w + "tags", "expected a mapping of strings to strings")
        conn = r.mapping(g.get("connectivity"), w + "connectivity", {"every_s", "offline_s"})
        try:
            connectivity = Connectivity(
                float(r.number(conn, "every_s", w + "connectivity.", 0.0)),
                float(r.number(conn, "offline_s", w + "connectivity.", 0.0)),
            )
        except ValueError as exc:
            raise r.fail(w + "connectivity", str(exc)) from exc
        ota = g.get("ota", False)
        if not isinstance(ota, bool):
            raise r.fail(w + "ota", f"expected true or false, got {ota!r}")
        count = r.number(g, "count", w, minimum=1, integer=True)
        agents = r.number(g, "agents", w, 0, integer=True)
        if agents > count:
            raise r.fail(w + "agents", f"{agents} agent processes is more than the group's count ({count})")
        if agents and (connectivity.every_s or g.get("rows", 1) != 1):
            raise r.fail(w + "agents", "agent processes take neither connectivity cycles nor rows > 1 (yet)")
        groups.append(
            DeviceGroup(
                profile,
                count,
                float(r.number(g, "rate_hz", w, 2.0, strict=True)),
                r.number(g, "rows", w, 1, minimum=1, integer=True),
                dict(tags),
                connectivity,
                ota,
                agents,
            )
        )

    events = []
    for i, item in enumerate(top.get("events") or []):
        events.append(_parse_event(r, item, i, duration))

    d = r.mapping(top.get("drift"), "drift", set(DriftSettings.__dataclass_fields__))
    drift = DriftSettings(
        **{
            k: r.number(
                d,
                k,
                "drift.",
                getattr(DriftSettings(), k),
                strict=k not in ("close_below", "rate_close_below"),
                integer=k in ("min_samples", "min_requests", "k_open"),
            )
            for k in d
        }
    )
    if drift.close_below > drift.open_above:
        raise r.fail("drift.close_below", f"must be <= open_above ({drift.open_above})")
    if drift.rate_close_below > drift.rate_open_above:
        raise r.fail("drift.rate_close_below", f"must be <= rate_open_above ({drift.rate_open_above})")
    e = r.mapping(top.get("expect"), "expect", set(Expect.__dataclass_fields__))
    rollout = e.get("rollout")
    if rollout is not None and rollout not in ROLLOUT_OUTCOMES:
        raise r.fail("expect.rollout", f"{rollout!r} is not one of {', '.join(ROLLOUT_OUTCOMES)}")
    if rollout is not None and not any(ev.kind == "rollout" for ev in events):
        raise r.fail("expect.rollout", "the scenario has no rollout event")
    within = e.get("alert_within_windows")
    if within is not None and not any(ev.kind == "drift" for ev in events):
        raise r.fail("expect.alert_within_windows", "the scenario has no drift event")
    for flag in ("no_alert", "telemetry_complete"):
        if flag in e and not isinstance(e[flag], bool):
            raise r.fail(f"expect.{flag}", f"expected true or false, got {e[flag]!r}")
    expect = Expect(
        alert_within_windows=None
        if within is None
        else r.number(e, "alert_within_windows", "expect.", minimum=1, integer=True),
        no_alert=bool(e.get("no_alert", False)),
        rollout=rollout,
        telemetry_complete=bool(e.get("telemetry_complete", True)),
        max_p99_ms=r.number(e, "max_p99_ms", "expect.", None, strict=True),
    )
    if any(ev.kind == "rollout" for ev in events) and not any(g.ota for g in groups):
        raise r.fail("events", "a rollout needs devices with `ota: true`")
    data_path = top.get("data")
    if data_path is not None and not isinstance(data_path, str):
        raise r.fail("data", f"expected a path to an .npz file, got {data_path!r}")
    threshold = r.number(top, "threshold", "", 0.8)
    if threshold > 1:
        raise r.fail("threshold", f"must be between 0 and 1, got {threshold}")
    return Scenario(
        name=name,
        description=str(top.get("description", "")).strip(),
        duration_s=float(duration),
        devices=tuple(groups),
        events=tuple(sorted(events, key=lambda ev: ev.at_s)),
        window_s=float(r.number(top, "window_s", "", 1.0, strict=True)),
        seed=r.number(top, "seed", "", 0, integer=True),
        data=data_path,
        threshold=float(threshold),
        fallback_deadline_ms=float(r.number(top, "fallback_deadline_ms", "", 200.0, strict=True)),
        watch_s=float(r.number(top, "watch_s", "", 3.0, strict=True)),
        drift=drift,
        expect=expect,
        source=source,
    )


_EVENT_KEYS = {
    "drift": {"change", "value", "classes", "fraction", "profiles", "until_s"},
    "outage": set(),
    "network": {"latency_ms", "jitter_ms", "loss", "bandwidth_bps", "stalled", "target"},
    "rollout": {
        "release",
        "waves",
        "max_fallback_rise",
        "max_failure_rate",
        "min_reporting",
        "wave_timeout_s",
        "max_latency_ratio",
        "min_devices",
    },
}


def _parse_event(r: _Reader, item: Any, i: int, duration: float) -> Event:
    w = f"events[{i}]"
    if not isinstance(item, Mapping) or item.get("kind") not in EVENT_KINDS:
        kind = item.get("kind") if isinstance(item, Mapping) else None
        raise r.fail(f"{w}.kind", f"{kind!r} is not one of {', '.join(EVENT_KINDS)}")
    kind = item["kind"]
    ev = r.mapping(item, w, {"kind", "at_s", "for_s"} | _EVENT_KEYS[kind])
    at = float(r.number(ev, "at_s", w + "."))
    if at >= duration:
        raise r.fail(f"{w}.at_s", f"{at:g} is not before the end of the run (duration_s {duration:g})")
    for_s = r.number(ev, "for_s", w + ".", None, strict=True)
    if kind == "outage" and for_s is None:
        raise r.fail(f"{w}.for_s", "required for an outage")
    params = {k: v for k, v in ev.items() if k not in ("kind", "at_s", "for_s")}
    if kind == "drift":
        if params.get("change") not in CHANGE_KINDS:
            raise r.fail(f"{w}.change", f"{params.get('change')!r} is not one of {', '.join(CHANGE_KINDS)}")
        if params["change"] == "class_mix":
            classes = params.get("classes")
            if not isinstance(classes, list) or not classes or not all(isinstance(c, int) for c in classes):
                raise r.fail(f"{w}.classes", "class_mix needs a non-empty list of class numbers")
        else:
            r.number(params, "value", w + ".", strict=params["change"] == "brightness")
        fraction = r.number(params, "fraction", w + ".", 1.0, strict=True)
        if fraction > 1:
            raise r.fail(f"{w}.fraction", f"share of devices, must be <= 1, got {fraction}")
    elif kind == "network":
        for key in ("latency_ms", "jitter_ms", "loss", "bandwidth_bps"):
            r.number(params, key, w + ".", None, strict=key == "bandwidth_bps")
        if params.get("loss", 0) > 1:
            raise r.fail(f"{w}.loss", "a probability, must be <= 1")
        if not isinstance(params.get("stalled", False), bool):
            raise r.fail(f"{w}.stalled", f"expected true or false, got {params['stalled']!r}")
        if params.get("target", "both") not in ("grpc", "mqtt", "both"):
            raise r.fail(f"{w}.target", f"{params['target']!r} is not one of grpc, mqtt, both")
    elif kind == "rollout":
        if params.get("release") not in RELEASE_KINDS:
            raise r.fail(f"{w}.release", f"{params.get('release')!r} is not one of {', '.join(RELEASE_KINDS)}")
        waves = params.get("waves", [25, 50, 100])
        if (
            not isinstance(waves, list)
            or not waves
            or waves[-1] != 100
            or waves != sorted(set(waves))
            or not all(isinstance(x, int) and 0 < x <= 100 for x in waves)
        ):
            raise r.fail(f"{w}.waves", f"expected increasing percentages ending at 100, got {waves!r}")
        for key in ("max_fallback_rise", "max_failure_rate", "min_reporting", "wave_timeout_s", "max_latency_ratio"):
            r.number(params, key, w + ".", None)
    return Event(at, kind, None if for_s is None else float(for_s), params)


def load_scenario(path_or_name: str | Path) -> Scenario:
    """A scenario by file path, or by name from sim/scenarios/ (`steady`, `drift`, ...)."""
    path = Path(path_or_name)
    if not path.exists() and not path.suffix:
        path = SCENARIO_DIR / f"{path_or_name}.yaml"
    if not path.exists():
        raise ScenarioError(f"{path_or_name}: no such scenario file (built-in: {', '.join(builtin_names())})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML ({exc})") from exc
    return parse_scenario(data, str(path))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))

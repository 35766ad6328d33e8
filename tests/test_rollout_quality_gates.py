"""Quality-gated rollouts with a control cohort: the pure controller on synthetic cohort figures, and
end to end with a real hub, Mosquitto and simulated devices (real OTA client, A/B store, ONNX
Runtime) whose windows come from the agent's real TelemetryService over MQTT into the hub's ingest."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from tandem.cloud_hub.ota_cli import parse_gates
from tandem.cloud_hub.rollouts import controller as ctl
from tandem.cloud_hub.rollouts.controller import GatePolicy, Rollout, RolloutError
from tandem.cloud_hub.rollouts.quality import CohortFigures, Comparison, compare_cohorts, figures, verdict
from tandem.protocols.telemetry_codec import TelemetryWindow, encode_window
from ota_fixtures import MODEL, MOSQUITTO, SimDevice, ota_hub, releases, start_devices
from waiting import wait_for_rollout

DEVICES = [f"dev-{i:02d}" for i in range(10)]
GATES = GatePolicy(control_fraction=0.2, min_quality_requests=100, wave_timeout_s=60)


SPREAD = (15, 16, 17, 18, 19)  # a healthy model's confidences: spread over the top bins


def cohort(
    requests: int, fallback: float, bins: tuple[int, ...] = SPREAD, errors: int = 0, classes: tuple[int, ...] = (50, 50)
) -> CohortFigures:
    conf = [0] * 20
    for b in bins:
        conf[b] += requests // len(bins)
    return CohortFigures(
        devices=2,
        windows=10,
        requests=requests,
        fallbacks=round(requests * fallback),
        errors=errors,
        confidence=tuple(conf),
        classes=classes,
    )


WATCH_FIGURES = {
    "baseline": {"requests": 50, "fallback_rate": 0.0, "latency_p95_ms": 1.0},
    "current": {"requests": 50, "fallback_rate": 0.0, "latency_p95_ms": 1.0},
}


def commit_open_wave(r: Rollout, now: float) -> None:
    for d in r.opened():
        if d.state == "sent":
            # with the watch figures a device commits on (a commit without them does not pass a gate)
            ctl.on_status(r, d.device_id, "committed", "ok", "", WATCH_FIGURES, now)


def sent_to(sends: list[ctl.Send]) -> set[str]:
    return {s.device_id for s in sends}


def test_control_cohort_is_set_aside_deterministically_and_never_in_a_wave():
    r1, sends, events = ctl.new_rollout("ro-a", MODEL, "1.1.0", DEVICES, [50, 100], GATES, 0.0)
    r2, _, _ = ctl.new_rollout("ro-a", MODEL, "1.1.0", list(reversed(DEVICES)), [50, 100], GATES, 5.0)
    assert r1.control == r2.control and len(r1.control) == 2  # ceil(0.2 * 10), same for the same rollout
    assert not set(r1.control) & set(r1.devices) and set(r1.control) | set(r1.devices) == set(DEVICES)
    assert not sent_to(sends) & set(r1.control) and len(sends) == 4  # wave 1: half of the 8 that roll out
    assert events[0].detail["control"] == 2
    other, _, _ = ctl.new_rollout("ro-b", MODEL, "1.1.0", DEVICES, [50, 100], GATES, 0.0)
    assert len(other.control) == 2  # another rollout may pick others
    assert (
        len(ctl.new_rollout("ro-c", MODEL, "1.1.0", DEVICES, [100], GatePolicy(control_devices=3), 0)[0].control) == 3
    )
    with pytest.raises(RolloutError, match="leave none"):
        ctl.new_rollout("ro-d", MODEL, "1.1.0", DEVICES[:2], [100], GatePolicy(control_devices=2), 0.0)
    back = Rollout.from_dict(r1.to_dict())
    assert back.control == r1.control and back.gates == GATES


def test_a_rollout_saved_before_control_cohorts_still_loads():
    r, _, _ = ctl.new_rollout("ro-old", MODEL, "1.1.0", DEVICES, [100], GatePolicy(), 0.0)
    doc = r.to_dict()
    for key in ("control", "quality"):
        doc.pop(key)
    for key in [k for k in doc["gates"] if "control" in k or "quality" in k]:
        doc["gates"].pop(key)
    old = Rollout.from_dict(doc)
    assert old.control == [] and old.gates.control_fraction == 0.0
    commit_open_wave(old, 1.0)
    ctl.tick(old, 2.0)  # no control: no quality figures needed
    assert old.status == "completed"


def test_wave_halts_on_a_fallback_rise_against_control_and_names_the_figures():
    r, _, _ = ctl.new_rollout("ro-f", MODEL, "1.3.0", DEVICES, [50, 100], GATES, 0.0)
    commit_open_wave(r, 1.0)
    assert ctl.quality_query(r).wave_devices == tuple(sorted(d.device_id for d in r.opened()))
    assert ctl.quality_query(r).control_devices == tuple(r.control) and ctl.quality_query(r).since == 0.0
    sends, events = ctl.tick(r, 2.0, quality=Comparison(cohort(400, 0.31), cohort(500, 0.04), 0.0, 2.0))
    assert r.status == "halted"
    assert r.reason == "wave 1: fallback rate 0.31 vs control 0.04 (max rise 0.10)"
    gate = next(e for e in events if e.kind == "quality_gate")
    assert gate.detail["wave"]["fallback_rate"] == 0.31 and gate.detail["control"]["fallback_rate"] == 0.04
    assert r.quality["wave"]["requests"] == 400
    assert sent_to(sends) == {d.device_id for d in r.opened()}  # rolled back; the control was never touched
    assert all(s.action == "rollback" for s in sends) and not sent_to(sends) & set(r.control)


@pytest.mark.parametrize(
    "wave, reason",
    [
        (cohort(400, 0.05, errors=40), "error rate 0.10 vs control 0.00 (max rise 0.05)"),
        (cohort(400, 0.05, bins=(10, 11, 12, 13, 14)), "mean confidence 0.62 vs control 0.88 (max drop 0.10)"),
        (cohort(400, 0.05, bins=(12, 19)), "confidence distribution PSI"),  # same mean, another shape
        (cohort(400, 0.05, classes=(90, 10)), "class mix PSI"),
    ],
)
def test_each_quality_gate_halts_with_its_own_figures(wave, reason):
    r, _, _ = ctl.new_rollout("ro-g", MODEL, "1.3.0", DEVICES, [50, 100], GATES, 0.0)
    commit_open_wave(r, 1.0)
    ctl.tick(r, 2.0, quality=Comparison(wave, cohort(500, 0.05), 0.0, 2.0))
    assert r.status == "halted" and reason in r.reason, r.reason


def test_wave_close_to_control_passes_every_wave_and_the_control_never_gets_a_command():
    r, sends, _ = ctl.new_rollout("ro-p", MODEL, "1.1.0", DEVICES, [25, 50, 100], GATES, 0.0)
    everyone, passed = sent_to(sends), []
    now = 1.0
    while r.status == "running" and now < 10:
        commit_open_wave(r, now)
        s, events = ctl.tick(
            r,
            now + 0.5,
            quality=Comparison(cohort(300, 0.06, classes=(48, 52)), cohort(300, 0.05), r.wave_opened_at, now),
        )
        everyone |= sent_to(s)
        passed += [e.detail for e in events if e.kind == "gate_passed"]
        now += 1.0
    assert r.status == "completed" and r.counts() == {"committed": 8}
    assert [p["wave"] for p in passed] == [1, 2, 3]
    assert all(
        p["quality"]["wave"]["fallback_rate"] == 0.06 and p["quality"]["control"]["requests"] == 300 for p in passed
    )
    assert not everyone & set(r.control) and not sent_to(ctl.catch_up(r)) & set(r.control)
    assert ctl.catch_up_device(r, r.control[0]) == []


def test_quality_waits_for_enough_requests_then_times_out_naming_what_was_missing():
    r, _, _ = ctl.new_rollout("ro-w", MODEL, "1.1.0", DEVICES, [50, 100], GATES, 0.0)
    commit_open_wave(r, 1.0)
    assert ctl.tick(r, 2.0) == ([], [])  # no figures yet: wait
    assert ctl.tick(r, 3.0, quality=Comparison(cohort(40, 0.9), cohort(500, 0.0), 0.0, 3.0)) == ([], [])
    assert r.status == "running" and r.quality["wave"]["requests"] == 40  # too few to judge, even a bad one
    ctl.tick(r, 62.0, quality=Comparison(cohort(40, 0.9), cohort(500, 0.0), 0.0, 62.0))
    assert r.status == "halted"
    assert r.reason == "wave 1: quality figures: wave 40 requests, control 500, need 100 each within 60s"


def test_quality_query_waits_for_the_wave_to_report_and_skips_rollouts_without_control():
    r, _, _ = ctl.new_rollout("ro-q", MODEL, "1.1.0", DEVICES, [50, 100], GATES, 0.0)
    assert ctl.quality_query(r) is None  # nobody reported yet
    plain, _, _ = ctl.new_rollout("ro-n", MODEL, "1.1.0", DEVICES, [50, 100], GatePolicy(), 0.0)
    commit_open_wave(plain, 1.0)
    assert ctl.quality_query(plain) is None


def window(device: str, seq: int, version: str, edge: int, cloud: int, conf_bin: int, end: float) -> bytes:
    w = TelemetryWindow(
        schema_version=1,
        device_id=device,
        sequence=seq,
        model_name=MODEL,
        model_version=version,
        start_unix=end - 1,
        end_unix=end,
    )
    w.requests.edge, w.requests.cloud = edge, cloud
    conf = [0] * 20
    conf[conf_bin] = edge + cloud
    w.confidence_counts.extend(conf)
    w.class_counts.extend([edge + cloud, 0])
    return encode_window(w)


def test_figures_come_from_stored_windows_wave_on_the_new_version_control_on_any_other():
    q = ctl.QualityQuery(("a", "b"), ("c",), "1.3.0", 10.0)
    wave = [
        window("a", 1, "1.0.0", 100, 0, 19, 11),
        window("a", 2, "1.3.0", 10, 90, 2, 12),
        window("b", 1, "1.3.0", 20, 80, 2, 12),
        b"not a window",
    ]
    control = [window("c", 1, "1.0.0", 95, 5, 19, 12), window("c", 2, "1.3.0", 0, 100, 2, 12)]
    c = compare_cohorts(q, wave, control, 13.0)
    assert (c.wave.requests, c.wave.fallbacks, c.wave.devices, c.wave.windows) == (200, 170, 2, 2)
    assert (c.control.requests, c.control.fallbacks) == (100, 5)
    assert c.wave.mean_confidence == pytest.approx(0.125) and c.control.mean_confidence == pytest.approx(0.975)
    assert verdict(c, GATES) == ("halt", "fallback rate 0.85 vs control 0.05 (max rise 0.10)")
    assert figures([]).requests == 0 and figures([]).mean_confidence is None


def test_gate_settings_reach_the_policy_from_cli_and_are_validated():
    parsed = parse_gates(
        [
            "control_fraction=0.1",
            "control_devices=3",
            "max_fallback_rise_vs_control=0.05",
            "max_class_psi_vs_control=none",
            "min_quality_requests=50",
        ]
    )
    g = GatePolicy(**parsed)
    assert (g.control_fraction, g.control_devices, g.max_class_psi_vs_control, g.min_quality_requests) == (
        0.1,
        3,
        None,
        50,
    )
    for bad in (
        {"control_fraction": 1.0},
        {"control_devices": -1},
        {"max_fallback_rise_vs_control": 2.0},
        {"max_confidence_psi_vs_control": -0.1},
        {"min_quality_requests": 0},
    ):
        with pytest.raises(RolloutError):
            GatePolicy(**bad)


# -- end to end ------------------------------------------------------------------------------------

N_DEVICES = 6
THRESHOLD = 0.5


class TelemetryDevice(SimDevice):
    """A SimDevice that also runs the agent's TelemetryService: every served sample is recorded as an
    edge or cloud answer (confidence under THRESHOLD), and windows go to the hub over MQTT."""

    def __init__(self, *args, telemetry_dir: Path, **kwargs) -> None:
        super().__init__(*args, threshold=THRESHOLD, **kwargs)
        from tandem.edge_agent.telemetry import TelemetryService

        self._serve_lock = threading.Lock()
        self.telemetry = TelemetryService(
            self.client.config.mqtt_url,
            self.device_id,
            self.model.manifest,
            telemetry_dir,
            window_s=0.3,
            profile="cpu-x86",
        )

    def swap(self, model_dir: Path) -> None:
        with self._serve_lock:
            super().swap(model_dir)
            self.telemetry.switch_model(self.model.manifest)

    def serve(self) -> None:
        with self._serve_lock:
            name = self.model.variant.inputs[0].name
            t0 = time.perf_counter()
            probs = self.model.session.run({name: self.inputs})[0]
            ms = (time.perf_counter() - t0) * 1000 / len(self.inputs)
            for row in probs:
                conf = float(row.max())
                self.telemetry.record("edge" if conf >= THRESHOLD else "cloud", ms, conf, int(row.argmax()))

    def start(self) -> "TelemetryDevice":
        self.telemetry.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.telemetry.stop(drain_timeout_s=0.5)


@pytest.fixture(scope="module")
def fleet(digits_dir, tmp_path_factory):
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    from tandem.edge_agent.ota.machine import WatchPolicy

    ota_releases = releases(digits_dir, lambda: tmp_path_factory.mktemp("ota-releases"))
    root = tmp_path_factory.mktemp("quality-fleet")
    rollouts = {"tick_s": 0.1, "watch_s": 0.6, "quality_interval_s": 0.3}
    with ota_hub(root, ota_releases.values(), rollouts=rollouts) as env:
        hub = env.hub
        devices: list[TelemetryDevice] = []
        stop = threading.Event()
        commands: list[str] = []
        sniffer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-cmd-sniffer", protocol=mqtt.MQTTv5)
        try:
            sniffer.on_message = lambda c, u, msg: commands.append(msg.topic.split("/")[2])
            sniffer.connect("127.0.0.1", env.broker.port)
            sniffer.subscribe("tandem/v1/+/ota/cmd", qos=1)
            sniffer.loop_start()
            # the devices' own health watch is left loose: here the hub's gate against the control must catch it
            watch = WatchPolicy(watch_s=0.6, min_requests=20, max_fallback_rise=1.0, max_latency_ratio=100.0)

            def device(dev_id: str, *args: Any) -> TelemetryDevice:
                return TelemetryDevice(dev_id, *args, telemetry_dir=root / "telemetry" / dev_id)

            ids = [f"qdev-{i:02d}" for i in range(N_DEVICES)]
            start_devices(env, devices, ids, ota_releases["1.0.0"], digits_dir, watch, device)

            def traffic() -> None:
                while not stop.wait(0.1):
                    for d in devices:
                        try:
                            d.serve()
                        except Exception:  # a device mid-swap: serve next round
                            pass

            feeder = threading.Thread(target=traffic, daemon=True)
            feeder.start()
            yield hub, devices, env.http, commands
        finally:
            stop.set()
            sniffer.loop_stop()
            for d in devices:
                d.stop()  # then ota_hub stops the hub (and the rollout service attach_rollouts put in place)


def _start(http: httpx.Client, version: str) -> str:
    resp = http.post(
        "/v1/rollouts",
        json={
            "model": MODEL,
            "version": version,
            "select": {"profile": "cpu-x86", "site": "lab"},
            "waves": [50, 100],
            # the per-device health gates and drift alerts are opened wide: the control comparison must decide
            "gates": {
                "min_reporting": 1.0,
                "wave_timeout_s": 60,
                "max_latency_ratio": 100.0,
                "max_fallback_rise": 1.0,
                "max_drift_alerts": 1000,
                "control_devices": 2,
                "min_quality_requests": 150,
            },
        },
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["rollout_id"]


@pytest.mark.slow
def test_good_model_passes_each_wave_against_control_and_control_stays_on_its_version(fleet):
    hub, devices, http, commands = fleet
    first = len(commands)
    rid = _start(http, "1.1.0")
    body = wait_for_rollout(http, rid, ("completed",), timeout_s=90)
    control = set(body["control"])
    passed = [e for e in body["events"] if e["kind"] == "gate_passed"]
    assert [e["detail"]["wave"] for e in passed] == [1, 2]
    for e in passed:
        fig = e["detail"]["quality"]
        assert abs(fig["wave"]["fallback_rate"] - fig["control"]["fallback_rate"]) <= 0.10
        assert fig["wave"]["requests"] >= 150 and fig["control"]["requests"] >= 150
    assert body["counts"] == {"committed": N_DEVICES - 2}
    serving = {d.device_id: d.serving for d in devices}
    assert {serving[c] for c in control} == {"1.0.0"}
    assert {v for k, v in serving.items() if k not in control} == {"1.1.0"}
    assert commands[first:] and not set(commands[first:]) & control


@pytest.mark.slow
def test_collapsed_model_halts_on_quality_against_control_and_control_is_never_sent_a_command(fleet):
    hub, devices, http, commands = fleet
    before = {d.device_id: d.serving for d in devices}
    switches = {d.device_id: d.switches for d in devices}
    assert set(before.values()) == {"1.0.0", "1.1.0"}, "runs after the good rollout"
    first = len(commands)
    rid = _start(http, "1.3.0")
    body = wait_for_rollout(
        http,
        rid,
        ("halted",),
        settle=lambda b: all(d["state"] in ("rolled_back", "pending") for d in b["device_states"]),
    )
    control = set(body["control"])
    assert len(control) == 2 and not control & {d["device_id"] for d in body["device_states"]}
    # the devices committed it themselves (their watch is loose); the hub's gate named the figures
    assert re.fullmatch(r"wave 1: fallback rate (\d\.\d\d) vs control (\d\.\d\d) \(max rise 0\.10\)", body["reason"]), (
        body["reason"]
    )
    q = body["quality"]
    assert q["wave"]["fallback_rate"] > 0.5 and q["control"]["fallback_rate"] < 0.2
    assert q["wave"]["mean_confidence"] < q["control"]["mean_confidence"]
    assert q["wave"]["requests"] >= 150 and q["control"]["requests"] >= 150
    steps = [e for e in body["events"] if e["kind"] == "device_step" and e["detail"]["step"] == "committed"]
    # wave 1 (2 of the 4 rolled out to) took it; a device may report it twice (an at-least-once status, or
    # its answer to a catch-up repeat), so count devices
    assert len({e["device_id"] for e in steps}) == 2, steps
    time.sleep(0.5)
    assert {d.device_id: d.serving for d in devices} == before  # the wave went back, the control never moved
    assert all(d.switches == switches[d.device_id] for d in devices if d.device_id in control)
    assert commands[first:] and not set(commands[first:]) & control  # not one command reached the control

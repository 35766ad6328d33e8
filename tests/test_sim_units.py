"""The simulator's pure parts: stream schedules, hardware emulation, scenario validation, the
fault proxy (real loopback sockets), metrics, and one virtual device against a dead hub."""

from __future__ import annotations

import random
import socket
import threading

import numpy as np
import pytest

from tandem.hardware_profiles import get_profile
from tandem.sim.emulation import Connectivity, ModelRefused, check_fits, emulated_latency_ms
from tandem.sim.netfault import FaultProxy, Faults, NetFaultError, delivery_time
from tandem.sim.scenario import ScenarioError, builtin_names, load_scenario, parse_scenario
from tandem.sim.streams import Change, Dataset, DeviceStream, StreamError


def _data(n: int = 200) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset.from_arrays(rng.uniform(0, 1, size=(n, 8)).astype(np.float32), np.arange(n) % 4)


# -- streams -------------------------------------------------------------------------------


def test_stream_changes_apply_only_inside_their_window():
    from dataclasses import replace

    flat = replace(Dataset.from_arrays(np.full((50, 8), 0.5, np.float32), np.arange(50) % 4), lo=0.0, hi=1.0)
    s = DeviceStream(flat, [Change("noise", at_s=10, value=0.3, until_s=20)], seed=1)
    before, _ = s.next(5.0, 400)
    during, _ = s.next(15.0, 400)
    after, _ = s.next(25.0, 400)
    assert [c.kind for c in s.active(15.0)] == ["noise"] and not s.active(20.0)
    assert np.all(before == 0.5) and np.all(after == 0.5)
    assert 0.2 < float(during.std()) < 0.4 and during.min() >= 0.0 and during.max() <= 1.0
    data = _data()
    assert np.array_equal(DeviceStream(data, seed=1).next(5.0, 10)[0], DeviceStream(data, seed=1).next(5.0, 10)[0])


def test_class_mix_shift_samples_only_the_named_classes_and_brightness_scales():
    data = _data()
    s = DeviceStream(data, [Change("class_mix", at_s=0, classes=(1, 3)), Change("brightness", at_s=0, value=0.5)])
    x, y = s.next(1.0, 300)
    assert set(np.unique(y)) == {1, 3}
    assert x.max() <= 0.5 + 1e-6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="blur", at_s=0), "not one of"),
        (dict(kind="noise", at_s=5, until_s=5), "at_s < until_s"),
        (dict(kind="brightness", at_s=0, value=0), "factor"),
        (dict(kind="class_mix", at_s=0), "non-empty"),
    ],
)
def test_bad_changes_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(StreamError, match=message):
        Change(**kwargs)


def test_class_mix_of_a_class_the_data_lacks_is_refused():
    with pytest.raises(StreamError, match=r"classes \[9\]"):
        DeviceStream(_data(), [Change("class_mix", at_s=0, classes=(9,))])


def test_dataset_load_names_the_missing_array(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, inputs=np.zeros((2, 3)))
    with pytest.raises(StreamError, match="no array 'x'"):
        Dataset.load(path)


# -- emulation -------------------------------------------------------------------------------


def test_latency_scales_with_relative_speed():
    arm, cuda, x86 = get_profile("cpu-arm"), get_profile("gpu-cuda"), get_profile("cpu-x86")
    assert emulated_latency_ms(1.0, 1, x86) == pytest.approx(1.0)
    assert emulated_latency_ms(1.0, 4, arm) / emulated_latency_ms(1.0, 4, cuda) == pytest.approx(
        cuda.relative_speed / arm.relative_speed
    )
    jittered = [emulated_latency_ms(1.0, 1, x86, np.random.default_rng(i)) for i in range(200)]
    assert 0.8 < float(np.median(jittered)) < 1.2


def test_a_variant_over_the_size_or_memory_budget_is_refused():
    npu = get_profile("npu-litert")  # 20 MB model budget, 256 MB memory
    check_fits(5 * 1024 * 1024, npu)
    with pytest.raises(ModelRefused, match="model_size_budget_mb"):
        check_fits(25 * 1024 * 1024, npu)
    with pytest.raises(ModelRefused, match="memory_budget_mb"):
        check_fits(19 * 1024 * 1024, npu, resident_factor=20.0)


def test_intermittent_connectivity_cycles():
    c = Connectivity(every_s=10, offline_s=3)
    assert [c.online(t) for t in (0, 2.9, 3.0, 9.9, 10.5, 13.5)] == [False, False, True, True, False, True]
    assert Connectivity().online(123.0)
    with pytest.raises(ValueError):
        Connectivity(every_s=2, offline_s=2)


# -- scenarios --------------------------------------------------------------------------------


def test_every_builtin_scenario_loads():
    names = builtin_names()
    assert {"steady", "hub_outage", "drift", "rollout_good", "rollout_bad", "mixed", "demo"} <= set(names)
    for n in names:
        assert load_scenario(n).device_count > 0


BASE = {"name": "t", "duration_s": 10, "devices": [{"profile": "cpu-arm", "count": 2}]}


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"devices": [{"profile": "tpu-9000", "count": 1}]}, "devices[0].profile"),
        ({"devices": [{"profile": "cpu-arm", "count": 0}]}, "devices[0].count"),
        ({"devices": [{"profile": "cpu-arm", "count": 1, "speed": 2}]}, "devices[0].speed"),
        ({"color": "red"}, "color"),
        ({"events": [{"kind": "earthquake", "at_s": 1}]}, "events[0].kind"),
        ({"events": [{"kind": "outage", "at_s": 1}]}, "events[0].for_s"),
        ({"events": [{"kind": "outage", "at_s": 11, "for_s": 1}]}, "events[0].at_s"),
        (
            {"events": [{"kind": "drift", "at_s": 1, "change": "noise", "value": 0.1, "fraction": 2}]},
            "events[0].fraction",
        ),
        ({"events": [{"kind": "rollout", "at_s": 1, "release": "good"}]}, "events"),
        (
            {
                "events": [{"kind": "rollout", "at_s": 1, "release": "good", "waves": [50, 20]}],
                "devices": [{"profile": "cpu-arm", "count": 1, "ota": True}],
            },
            "events[0].waves",
        ),
        ({"expect": {"rollout": "completed"}}, "expect.rollout"),
        ({"drift": {"span_s": -1}}, "drift.span_s"),
        ({"threshold": 1.5}, "threshold"),
        ({"devices": [{"profile": "cpu-arm", "count": 1, "agents": 2}]}, "devices[0].agents"),
    ],
)
def test_scenario_errors_name_the_key(patch, key):
    with pytest.raises(ScenarioError) as info:
        parse_scenario({**BASE, **patch}, "x.yaml")
    assert str(info.value).startswith(f"x.yaml: {key}:"), str(info.value)


def test_scaling_keeps_group_proportions_and_scales_event_times():
    sc = load_scenario("mixed").scaled(devices=300, duration_s=60)
    assert sc.device_count == 300 and [g.count for g in sc.devices] == [100, 100, 100]
    assert sc.events[0].at_s == pytest.approx(20) and sc.events[0].for_s == pytest.approx(20)
    with pytest.raises(ScenarioError, match="device groups"):
        load_scenario("mixed").scaled(devices=2)


# -- the fault proxy ---------------------------------------------------------------------------


def test_delivery_keeps_order_adds_latency_and_caps_bandwidth():
    rng = random.Random(0)
    f = Faults(latency_ms=50, jitter_ms=20)
    times, prev = [], 0.0
    for i in range(100):
        prev = delivery_time(i * 0.001, prev, 100, f, rng)
        times.append(prev)
    assert times == sorted(times) and times[0] >= 0.05
    capped = delivery_time(0.0, 1.0, 1000, Faults(bandwidth_bps=1000), rng)
    assert capped == pytest.approx(2.0)
    with pytest.raises(NetFaultError):
        Faults(loss=1.5)


@pytest.fixture
def echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    srv.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _roundtrip(port: int, payload: bytes = b"hello") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            try:
                chunk = c.recv(65536)
            except ConnectionResetError:  # the proxy aborts (RST) what it cuts
                break
            if not chunk:
                break
            got += chunk
        return got


def test_proxy_forwards_then_partition_cuts_and_refuses_then_heals(echo_server):
    proxy = FaultProxy("127.0.0.1", echo_server, name="t").start()
    try:
        assert _roundtrip(proxy.port, b"x" * 200_000) == b"x" * 200_000
        live = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        live.sendall(b"ping")
        assert live.recv(10) == b"ping"
        proxy.partition(True)
        live.settimeout(2)
        try:
            assert live.recv(10) == b""  # the open connection was cut
        except ConnectionResetError:
            pass
        live.close()
        assert _roundtrip(proxy.port) == b""  # new connections are refused
        assert proxy.refused >= 1
        proxy.partition(False)
        assert _roundtrip(proxy.port) == b"hello"
        proxy.set(loss=1.0)
        assert _roundtrip(proxy.port) == b""  # every chunk resets the connection
        assert proxy.reset >= 1
        proxy.clear()
        assert _roundtrip(proxy.port) == b"hello"
    finally:
        proxy.stop()


def test_a_stalled_proxy_holds_bytes_until_the_stall_clears(echo_server):
    proxy = FaultProxy("127.0.0.1", echo_server, name="stall").start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as c:
            c.sendall(b"a")
            assert c.recv(1) == b"a"
            proxy.set(stalled=True)
            c.sendall(b"held")
            c.settimeout(0.3)
            with pytest.raises(socket.timeout):
                c.recv(10)  # open, but nothing moves
            proxy.set(stalled=False)
            c.settimeout(2)
            got = b""
            while len(got) < 4:
                got += c.recv(10)
            assert got == b"held"
    finally:
        proxy.stop()


# -- one virtual device ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(digits_dir, tmp_path_factory):
    from tandem.sim.releases import prepare

    return prepare(tmp_path_factory.mktemp("sim-models"), ["cpu-arm", "npu-litert"], digits_dir)


def _device(compiled, tmp_path, profile, hub_url="127.0.0.1:1"):
    from tandem.edge_agent.breaker import CircuitBreaker
    from tandem.edge_agent.fallback import FallbackClient
    from tandem.edge_agent.policy import ConfidencePolicy
    from tandem.sim.device import DeviceSpec, VirtualDevice
    from tandem.sim.sessions import SessionPool

    pool = SessionPool()
    spec = DeviceSpec("dev-1", profile, rate_hz=10)
    fallback = FallbackClient(hub_url, deadline_ms=50, breaker=CircuitBreaker(3, 60.0))
    stream = DeviceStream(Dataset.load(compiled.data_dir / "test.npz"), seed=3)
    # threshold 1.0: nothing is confident, every request asks the hub
    return VirtualDevice(
        spec,
        pool,
        stream,
        ConfidencePolicy("max_prob", 1.0),
        fallback,
        "digits-cloud",
        tmp_path / "dev-1",
        window_s=1.0,
    ), pool


def test_device_serves_degraded_when_the_hub_is_dead_and_its_breaker_opens(compiled, tmp_path):
    dev, pool = _device(compiled, tmp_path, get_profile("cpu-arm"))
    try:
        assert dev.install(compiled.edge)
        outcomes = [dev.serve(float(i)) for i in range(10)]
        assert {o.source for o in outcomes} == {"edge-degraded"}
        assert dev.fallback.breaker.state == "open"
        assert dev.handle.variant.id == "litert-fp32"
        dev.telemetry.flush()
        assert dev.telemetry.sent == 1 and len(dev.telemetry.outbox) == 1
        h = dev.health()
        assert (h.requests, h.fallbacks, h.errors) == (10, 10, 0) and dev.health().requests == 0
    finally:
        dev.close()
        dev.fallback.close()
        pool.close()


def test_device_refuses_a_model_over_its_budget(compiled, tmp_path):
    from dataclasses import replace

    tiny = replace(get_profile("npu-litert"), model_size_budget_mb=0.001)
    dev, pool = _device(compiled, tmp_path, tiny)
    try:
        assert not dev.install(compiled.edge)
        assert "model_size_budget_mb" in dev.refused and dev.serve(0.0) is None
    finally:
        dev.close()
        dev.fallback.close()
        pool.close()


def test_devices_share_one_session_per_variant(compiled, tmp_path):
    from tandem.sim.sessions import SessionPool

    pool = SessionPool()
    try:
        a = pool.open(compiled.edge, get_profile("cpu-arm"))
        b = pool.open(compiled.edge, get_profile("cpu-arm"))
        c = pool.open(compiled.edge, get_profile("npu-litert"))
        assert a.shared is b.shared and a.shared is not c.shared and a.shared.users == 2
        assert a.shared.host_ms_per_row > 0
        x = Dataset.load(compiled.data_dir / "test.npz").x[:5]
        assert a.run(x).shape == (5, 10)
    finally:
        pool.close()


def test_recorder_buckets_outcomes():
    from tandem.sim.device import Outcome
    from tandem.sim.metrics import Recorder

    r = Recorder(1.0)
    for i, src in enumerate(["edge", "edge", "cloud", "edge-degraded"]):
        r.add([0.1, 0.5, 1.2, 1.6][i], Outcome("d", "cpu-arm", src, float(i + 1), 1, 1, "1.0.0"))
    rows = r.rows()
    assert [row["requests"] for row in rows] == [2, 2]
    assert rows[1]["fallback_rate"] == 1.0 and rows[1]["degraded_rate"] == 0.5
    assert r.summary()["requests"] == 4 and r.summary()["accuracy"] == 1.0


def test_progress_redraws_on_a_terminal_and_writes_plain_lines_to_a_log():
    import io

    from tandem.sim.cli import _Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    p = _Progress(tty)
    p("\rt=1/50s devices=20\033[K")
    assert tty.getvalue() == "\rt=1/50s devices=20\033[K"
    log = io.StringIO()
    p = _Progress(log, log_every_s=3600)
    p("\rt=1/50s devices=20\033[K")
    p("\rt=2/50s devices=20\033[K")  # within log_every_s: not repeated
    p("\r  t=3s drift injected\033[K\n")  # events always
    p("\n")
    assert log.getvalue() == "t=1/50s devices=20\n  t=3s drift injected\n"

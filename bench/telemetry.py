"""Benchmark hub telemetry ingestion: windows per second one hub process takes through Mosquitto.

Publisher processes (separate from the hub) stream realistic encoded windows for many
simulated devices (each its own device id and sequence, 5 input summaries x 11 bins,
20 confidence bins, 10 classes, a few cohorts) at QoS 1. The hub side is the real
TelemetryIngestService (decode with limits, INSERT OR IGNORE into SQLite with
synchronous=FULL, manual PUBACK after commit) with the drift engine evaluating every
`--eval-interval` seconds against a reference. The baseline, measured in the same run,
is a bare paho subscriber that only counts the same messages: the ceiling of
broker + paho on this machine. Devices implied = windows/s x 10 (one window per 10 s).

Usage: python bench/telemetry.py [--json] [--devices 20000] [--windows-per-device 3]
                                 [--publishers 2] [--eval-interval 1]
Progress goes to stderr; the result (a table, or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from tandem.cloud_hub.telemetry import DriftConfig, TelemetryIngestService, TelemetryServiceConfig  # noqa: E402
from tandem.protocols import limits  # noqa: E402
from tandem.protocols.telemetry_codec import LATENCY_EDGES_MS, TelemetryWindow, encode_window  # noqa: E402
from tandem.protocols.topics import all_devices, parse_mqtt_url, telemetry_topic  # noqa: E402

SUMMARIES = ("mean", "std", "min", "max", "l2")
EDGES = [float(e) for e in np.linspace(-1, 1, 10)]
REFERENCE = {
    "inputs": {"input": {s: {"edges": EDGES, "counts": [30] * 11} for s in SUMMARIES}},
    "confidence": {"counts": [1] * 10 + [5] * 5 + [20, 30, 50, 80, 120]},
    "classes": {"counts": [30] * 10},
}
COHORTS = 8


class Broker:
    """Mosquitto with a generated config: queues and in-flight windows sized for a fleet."""

    def __init__(self, workdir: Path) -> None:
        import getpass
        import shutil
        import socket
        import subprocess

        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
            "max_queued_messages 1000000\nmax_inflight_messages 1000\n"
        )
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def make_window(rng: np.random.Generator, device: str, seq: int, t: float) -> bytes:
    w = TelemetryWindow(
        schema_version=limits.TELEMETRY_SCHEMA_VERSION,
        device_id=device,
        sequence=seq,
        model_name="digits",
        model_version="1.0.0",
        variant="ort-int8",
        profile="cpu-x86",
        start_unix=t - 10,
        end_unix=t,
        samples=40,
        latency_sum_ms=80.0,
        latency_max_ms=9.0,
        input_samples=40,
    )
    w.tags["site"] = f"site-{int(device[-6:]) % COHORTS}"
    w.requests.edge, w.requests.cloud = 36, 4
    w.latency_counts.extend(
        rng.multinomial(40, [1 / (len(LATENCY_EDGES_MS) + 1)] * (len(LATENCY_EDGES_MS) + 1)).tolist()
    )
    w.confidence_counts.extend(rng.multinomial(40, np.array(REFERENCE["confidence"]["counts"]) / 345).tolist())
    w.class_counts.extend(rng.multinomial(40, [0.1] * 10).tolist())
    for s in SUMMARIES:
        w.inputs.add(input="input", summary=s, counts=rng.multinomial(40, [1 / 11] * 11).tolist())
    return encode_window(w)


def publisher(url: str, first: int, count: int, windows_per_device: int, ready: Any, go: Any, idx: int) -> None:
    """One process: `count` devices, `windows_per_device` windows each, QoS 1, as fast as acks allow."""
    rng = np.random.default_rng(idx)
    now = time.time()
    messages = [
        (telemetry_topic(f"sim-{d:06d}"), make_window(rng, f"sim-{d:06d}", seq, now + seq * 10))
        for seq in range(1, windows_per_device + 1)
        for d in range(first, first + count)
    ]
    host, port = parse_mqtt_url(url)
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{idx}-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    ready.set()
    go.wait()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def run_publishers(
    url: str, devices: int, windows_per_device: int, procs: int, first_device: int = 0
) -> tuple[list[mp.Process], Any]:
    """Start `procs` publisher processes for devices first_device.. (ids sim-NNNNNN); returns them and the go event."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    ps, readies = [], []
    per = devices // procs
    for i in range(procs):
        ready = ctx.Event()
        p = ctx.Process(
            target=publisher,
            args=(
                url,
                first_device + i * per,
                per if i < procs - 1 else devices - i * per,
                windows_per_device,
                ready,
                go,
                i,
            ),
            daemon=True,
        )
        p.start()
        ps.append(p)
        readies.append(ready)
    for r in readies:
        if not r.wait(300):
            raise SystemExit("a publisher process did not get ready")
    return ps, go


def measure_hub(url: str, data_dir: Path, devices: int, wpd: int, procs: int, eval_interval: float) -> dict[str, Any]:
    total = devices * wpd
    drift = DriftConfig(span_s=300, bucket_s=10, cohort_tags=("site",))
    hub = TelemetryIngestService(
        data_dir,
        url,
        lambda name, version: {"drift_reference": REFERENCE},
        TelemetryServiceConfig(eval_interval_s=eval_interval, drift=drift, ingest={"client_id": "bench-hub"}),
    )
    hub.start()
    eval_times: list[float] = []
    original = hub.evaluate

    def timed(now: float):
        t0 = time.perf_counter()
        out = original(now)
        eval_times.append(time.perf_counter() - t0)
        return out

    hub.evaluate = timed  # type: ignore[method-assign]
    try:
        if not hub.ingest.wait_subscribed(10):
            raise SystemExit("hub did not subscribe")
        ps, go = run_publishers(url, devices, wpd, procs)
        log(f"hub: {procs} publishers ready with {total} windows; go")
        t0 = time.perf_counter()
        go.set()
        deadline = t0 + 600
        while hub.ingest.stats.stored < total and time.perf_counter() < deadline:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        for p in ps:
            p.join(30)
        time.sleep(eval_interval * 1.5)  # let one more evaluation run on the full data
        stats = hub.ingest.stats.as_dict()
        last = hub.engine.last
        result = {
            "windows": total,
            "stored": stats["stored"],
            "duplicates": stats["duplicates"],
            "bad": stats["bad"],
            "batches": stats["batches"],
            "seconds": round(elapsed, 3),
            "windows_per_s": round(stats["stored"] / elapsed, 1),
            "evaluations": len(eval_times),
            "evaluation_ms_max": round(1000 * max(eval_times, default=0.0), 2),
            "signals_last_evaluation": len(last.status) if last else 0,
            "db_bytes": sum(f.stat().st_size for f in data_dir.glob("telemetry.sqlite*")),
        }
    finally:
        hub.stop()
    return result


def measure_baseline(url: str, devices: int, wpd: int, procs: int) -> dict[str, Any]:
    """A bare subscriber (QoS 1, automatic acks, no decode, no storage)."""
    total = devices * wpd
    host, port = parse_mqtt_url(url)
    count = [0]
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(c, u, m):
        count[0] += 1
        if count[0] >= total:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    client.subscribe(all_devices("telemetry"), qos=1)
    subscribed.wait(10)
    ps, go = run_publishers(url, devices, wpd, procs)
    t0 = time.perf_counter()
    go.set()
    done.wait(600)
    elapsed = time.perf_counter() - t0
    for p in ps:
        p.join(30)
    client.disconnect()
    client.loop_stop()
    return {
        "windows": total,
        "received": count[0],
        "seconds": round(elapsed, 3),
        "windows_per_s": round(count[0] / elapsed, 1),
    }


def table(report: dict[str, Any]) -> str:
    h, b = report["hub"], report["baseline"]
    return "\n".join(
        [
            f"host: {report['host']['cpus']} CPUs, {report['host']['python']}",
            f"{'':24}{'windows':>10}{'seconds':>10}{'windows/s':>12}",
            f"{'hub ingest + drift':24}{h['stored']:>10}{h['seconds']:>10}{h['windows_per_s']:>12}",
            f"{'bare subscriber':24}{b['received']:>10}{b['seconds']:>10}{b['windows_per_s']:>12}",
            f"hub / bare: {report['ratio_hub_to_bare']}",
            f"devices per hub process at one window per 10 s: {report['devices_at_10s']} (target >= 20000)",
            f"duplicates={h['duplicates']} bad={h['bad']} evaluations={h['evaluations']} "
            f"max evaluation={h['evaluation_ms_max']} ms",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--windows-per-device", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--eval-interval", type=float, default=1.0, help="drift evaluation period during the run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tandem-bench-telemetry-") as tmp:
        broker = Broker(Path(tmp) / "mosquitto")
        try:
            log(f"broker {broker.url}; baseline (bare subscriber)")
            baseline = measure_baseline(broker.url, args.devices, args.windows_per_device, args.publishers)
            log(f"baseline {baseline['windows_per_s']} windows/s; hub ingest with drift evaluation")
            hub = measure_hub(
                broker.url,
                Path(tmp) / "hub",
                args.devices,
                args.windows_per_device,
                args.publishers,
                args.eval_interval,
            )
        finally:
            broker.stop()
    report = {
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "config": vars(args),
        "hub": hub,
        "baseline": baseline,
        "ratio_hub_to_bare": round(hub["windows_per_s"] / max(baseline["windows_per_s"], 1e-9), 3),
        "devices_at_10s": int(hub["windows_per_s"] * 10),
        "meets_target_20000": hub["windows_per_s"] * 10 >= 20_000,
    }
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

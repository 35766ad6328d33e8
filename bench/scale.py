"""Benchmark the hub's way out of one machine: telemetry ingest with 1 and 2 replicas on SQLite and PostgreSQL.

Each row runs real hub replicas, `tandem-hub serve --cluster --replica-id rN` processes on one fresh data
dir (the lease, REST and gRPC up; telemetry through the MQTT 5 shared subscription
$share/<group>/tandem/v1/+/telemetry), fed through a fresh Mosquitto by publisher processes that stream
realistic encoded windows (bench/telemetry.py's) at QoS 1 for many simulated devices. Per row: windows/s
(wall clock, from the go signal until the database holds every window, counted apart from the replicas)
and the replicas' CPU-seconds per 1,000 windows (user + system time over the same span, from /proc): on a
shared host the CPU figure is the per-replica cost that sizing rests on, the wall clock is whatever the
neighbours left. The baseline, measured in the same run, is a bare paho subscriber counting the same
messages: the ceiling of broker + paho here.

Failover: two replicas, the lease holder SIGKILLed as a burst starts: seconds until the other replica
says it leads (GET /v1/cluster), and until the burst is stored by the survivor.
Storage per device-day: bytes of the SQLite telemetry file (after a WAL checkpoint, the empty schema
subtracted) per stored raw window x 8,640 windows (one per 10 s).
Rows whose parts are not in this tree print {"skipped": "<reason>"}; no figure is ever estimated.

Usage: python bench/scale.py [--json] [--devices 2000] [--windows-per-device 5] [--publishers 2]
Progress goes to stderr; the result (a table, or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sqlite3
import subprocess
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import httpx  # noqa: E402
import psutil  # noqa: E402

import telemetry as bench_telemetry  # noqa: E402  (bench/telemetry.py: broker, windows, publishers)
from _common import log  # noqa: E402

WINDOWS_PER_DEVICE_DAY = 24 * 3600 // 10  # one window per 10 s
READY_TIMEOUT_S = 180
RUN_TIMEOUT_S = 600
# A paused replica must be resumed before its broker keepalive (10 s, cut at 15 s) runs out: its shared
# subscription's session ends with the connection, and the windows queued for it with it.
PAUSE_MAX_S = 10.0


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def hub_cli(*args: str) -> str:
    """Run `tandem-hub ARGS` and return its stdout (raises with its stderr on failure)."""
    done = subprocess.run(
        [sys.executable, "-m", "tandem.cloud_hub.cli", *args], capture_output=True, text=True, env=_env(), timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"tandem-hub {' '.join(args)}: {done.stderr.strip()[-400:]}")
    return done.stdout


class Replica:
    """`tandem-hub serve --cluster --replica-id ID` on a shared data dir; REST on its own port."""

    def __init__(self, replica_id: str, data_dir: Path, mqtt_url: str, token: str, extra: list[str]) -> None:
        self.replica_id = replica_id
        self.mqtt_url = mqtt_url
        self.port = free_port()
        self.token = token
        self.log_path = data_dir.parent / f"{data_dir.name}-{replica_id}.log"
        cmd = [sys.executable, "-m", "tandem.cloud_hub.cli", "serve", "--cluster", "--replica-id", replica_id]
        cmd += ["--data-dir", str(data_dir), "--mqtt-url", mqtt_url, "--http-port", str(self.port)]
        cmd += ["--grpc-port", "0", "--log-level", "warning", *extra]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"), stdin=subprocess.DEVNULL, env=_env()
        )

    def metrics(self) -> dict[str, float]:
        """This replica's tandem_hub_telemetry_* samples from GET /metrics (empty while it is not answering)."""
        try:
            r = httpx.get(f"http://127.0.0.1:{self.port}/metrics", headers={"Authorization": f"Bearer {self.token}"})
        except httpx.HTTPError:
            return {}
        if r.status_code != 200:
            return {}
        out = {}
        for line in r.text.splitlines():
            if line.startswith("tandem_hub_telemetry_") and " " in line:
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def wait_subscribed(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.metrics().get("tandem_hub_telemetry_subscribed") == 1.0:
                return True
            time.sleep(0.5)
        return False

    def cluster(self) -> dict[str, Any]:
        """GET /v1/cluster (empty while it is not answering)."""
        try:
            r = httpx.get(
                f"http://127.0.0.1:{self.port}/v1/cluster", headers={"Authorization": f"Bearer {self.token}"}, timeout=5
            )
        except httpx.HTTPError:
            return {}
        return dict(r.json()) if r.status_code == 200 else {}

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def cpu_seconds(self) -> float:
        """User + system CPU of the replica process and its children."""
        proc = psutil.Process(self.proc.pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stored(metrics: dict[str, float]) -> int:
    return int(
        sum(
            v
            for k, v in metrics.items()
            if k.startswith("tandem_hub_telemetry_windows_total") and 'outcome="stored"' in k
        )
    )


def sqlite_windows(data_dir: Path) -> int:
    """Windows committed to the shared SQLite file, read apart from the replicas (their CPU is measured)."""
    path = data_dir / "telemetry.sqlite"
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        (n,) = conn.execute("SELECT COUNT(*) FROM telemetry_windows").fetchone()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return int(n)


def ingest_row(backend: str, replicas: int, devices: int, wpd: int, publishers: int, workdir: Path) -> dict[str, Any]:
    """Windows/s and CPU-seconds per 1,000 windows for `replicas` hub replicas on one fresh data dir and broker."""
    tag = f"{backend}-{replicas}"
    data_dir = workdir / f"hub-{tag}"
    data_dir.mkdir()
    token = json.loads(
        hub_cli("tokens", "create", "--scope", "read", "--name", "bench", "--data-dir", str(data_dir), "--json")
    )["token"]
    broker = bench_telemetry.Broker(workdir / f"mosquitto-{tag}")
    procs: list[Replica] = []
    try:
        broker_proc = psutil.Process(broker.proc.pid)
        procs = [Replica(f"r{i}", data_dir, broker.url, token, []) for i in range(replicas)]
        for r in procs:
            if not r.wait_subscribed(READY_TIMEOUT_S):
                return {"skipped": f"replica {r.replica_id} did not subscribe: {r.log_path.read_text()[-400:]}"}
        live = _live(procs, broker_proc, data_dir, devices, wpd, publishers, tag)
        drain = _drain(procs, broker_proc, data_dir, devices, wpd, publishers, tag)
        per_replica = [_stored(r.metrics()) for r in procs]
    finally:
        for r in procs:
            r.stop()
        broker.stop()
    return {
        "backend": backend,
        "replicas": replicas,
        "hub": "tandem-hub serve --cluster (lease, $share/ subscription, REST/gRPC up)",
        "live": live,
        "drain": drain,
        "stored_per_replica": per_replica,
        "windows_per_s_per_replica": round(drain["windows_per_s"] / replicas, 1),
        "cpu_s_per_1000_windows": drain["cpu_s_per_1000_windows"],
        "complete": live["complete"] and drain["complete"],
        "data_dir": str(data_dir),
    }


def _measure(
    procs: list[Replica], broker_proc: psutil.Process, data_dir: Path, target: int, t0: float
) -> dict[str, Any]:
    """Wait until the database holds `target` windows; wall seconds since t0 and CPU over that span."""
    cpu0 = [r.cpu_seconds() for r in procs]
    broker_cpu0 = sum(broker_proc.cpu_times()[:2])
    deadline = t0 + RUN_TIMEOUT_S
    while (stored := sqlite_windows(data_dir)) < target and time.perf_counter() < deadline:
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    cpu = [r.cpu_seconds() - c for r, c in zip(procs, cpu0)]
    return {
        "stored": stored,
        "elapsed": elapsed,
        "cpu": cpu,
        "broker_cpu": sum(broker_proc.cpu_times()[:2]) - broker_cpu0,
    }


def _figures(windows: int, m: dict[str, Any]) -> dict[str, Any]:
    done = min(windows, m["stored"])
    return {
        "windows": windows,
        "stored": done,
        "seconds": round(m["elapsed"], 3),
        "windows_per_s": round(done / m["elapsed"], 1),
        "cpu_s_per_replica": [round(c, 3) for c in m["cpu"]],
        "cpu_s_per_1000_windows": round(1000 * sum(m["cpu"]) / max(done, 1), 4),
        "broker_cpu_s_per_1000_windows": round(1000 * m["broker_cpu"] / max(done, 1), 4),
        "complete": done == windows,
    }


def _live(procs, broker_proc, data_dir, devices, wpd, publishers, tag) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Publishers and replicas at once: the rate the publishers on this host allow (compare with the bare run)."""
    total = devices * wpd
    ps, go = bench_telemetry.run_publishers(procs[0].mqtt_url, devices, wpd, publishers)
    log(f"{tag} live: {len(procs)} replica(s), {publishers} publishers ready with {total} windows; go")
    t0 = time.perf_counter()
    go.set()
    m = _measure(procs, broker_proc, data_dir, total, t0)
    for p in ps:
        p.join(30)
    return _figures(total, m)


def _drain(procs, broker_proc, data_dir, devices, wpd, publishers, tag) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The replicas paused (SIGSTOP) while the broker queues a burst for them, then resumed: the rate they
    take windows at when nothing else limits them, and their CPU for it."""
    before = sqlite_windows(data_dir)
    total = devices * wpd
    ps, go = bench_telemetry.run_publishers(procs[0].mqtt_url, devices, wpd, publishers, first_device=devices)
    for r in procs:
        r.pause()
    try:
        go.set()
        deadline = time.monotonic() + PAUSE_MAX_S
        for p in ps:  # every window acked by the broker, queued for the paused replicas
            p.join(max(0.1, deadline - time.monotonic()))
    finally:
        for r in procs:
            r.resume()
    log(f"{tag} drain: {total} windows queued at the broker; replicas resumed")
    m = _measure(procs, broker_proc, data_dir, before + total, time.perf_counter())
    m["stored"] -= before
    return _figures(total, m)


def failover_row(devices: int, wpd: int, publishers: int, workdir: Path) -> dict[str, Any]:
    """Two replicas; SIGKILL the lease holder as a burst of windows starts: seconds until the other says it
    leads (GET /v1/cluster), and until the burst is stored by the survivor alone (ingest needs no lease)."""
    tag = "failover"
    data_dir = workdir / f"hub-{tag}"
    data_dir.mkdir()
    token = json.loads(
        hub_cli("tokens", "create", "--scope", "read", "--name", "bench", "--data-dir", str(data_dir), "--json")
    )["token"]
    broker = bench_telemetry.Broker(workdir / f"mosquitto-{tag}")
    procs: list[Replica] = []
    total = devices * wpd
    try:
        procs = [Replica(f"r{i}", data_dir, broker.url, token, []) for i in range(2)]
        for r in procs:
            if not r.wait_subscribed(READY_TIMEOUT_S):
                return {"skipped": f"replica {r.replica_id} did not subscribe: {r.log_path.read_text()[-400:]}"}
        holder = None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while holder is None and time.monotonic() < deadline:
            holder = next((r for r in procs if r.cluster().get("leader")), None)
            time.sleep(0.2)
        if holder is None:
            return {"skipped": "no replica took the lease"}
        survivor = next(r for r in procs if r is not holder)
        ps, go = bench_telemetry.run_publishers(broker.url, devices, wpd, publishers)
        log(f"{tag}: SIGKILL lease holder {holder.replica_id}")
        killed_at = time.perf_counter()
        holder.proc.kill()
        holder.proc.wait(10)
        go.set()  # the burst starts as the holder dies
        takeover_s = burst_s = None
        deadline = killed_at + RUN_TIMEOUT_S
        while (takeover_s is None or burst_s is None) and time.perf_counter() < deadline:
            if takeover_s is None and survivor.cluster().get("leader"):
                takeover_s = time.perf_counter() - killed_at
            if burst_s is None and sqlite_windows(data_dir) >= total:
                burst_s = time.perf_counter() - killed_at
            time.sleep(0.1)
        for p in ps:
            p.join(30)
        stored = sqlite_windows(data_dir)
        epoch = survivor.cluster().get("epoch")
    finally:
        for r in procs:
            r.stop()
        broker.stop()
    return {
        "backend": "sqlite",
        "replicas": 2,
        "killed": "the lease holder, SIGKILL",
        "takeover_s": round(takeover_s, 2) if takeover_s is not None else None,
        "epoch_after": epoch,
        "burst_windows": total,
        "burst_stored": stored,
        "burst_stored_s_after_kill": round(burst_s, 3) if burst_s is not None else None,
        "survivor_windows_per_s": round(stored / burst_s, 1) if burst_s else None,
    }


def sqlite_bytes(data_dir: Path) -> int:
    """The telemetry file's size after folding the WAL into it (what the data costs on disk at rest)."""
    path = data_dir / "telemetry.sqlite"
    conn = sqlite3.connect(str(path))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path.stat().st_size


def sqlite_storage(full_dir: Path, windows: int, devices: int, workdir: Path) -> dict[str, Any]:
    """Bytes per stored raw window in SQLite and per device-day at one window per 10 s."""
    from tandem.cloud_hub.telemetry.store import TelemetryStore

    empty_dir = workdir / "empty-sqlite"
    TelemetryStore.open(empty_dir).close()
    empty, full = sqlite_bytes(empty_dir), sqlite_bytes(full_dir)
    per_window = (full - empty) / max(windows, 1)
    return {
        "backend": "sqlite",
        "what": "raw windows (telemetry_windows and its indexes)",
        "windows": windows,
        "devices": devices,
        "bytes_per_window": round(per_window, 1),
        "bytes_per_device_day": int(per_window * WINDOWS_PER_DEVICE_DAY),
        "windows_per_device_day": WINDOWS_PER_DEVICE_DAY,
    }


def host_info() -> dict[str, Any]:
    from tandem.model_compiler.host import read_host

    host = read_host()
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_features": sorted(host.cpu_features),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"host: {report['host']['cpus']} CPUs, load {report['host']['load_average']}, {report['host']['date']}",
        f"bare subscriber: {report['baseline']['windows_per_s']} windows/s",
        f"{'row':22}{'live w/s':>11}{'vs bare':>9}{'drain w/s':>11}{'per replica':>13}{'CPU-s/1k':>10}",
    ]
    for name, row in report["ingest"].items():
        if "skipped" in row:
            lines.append(f"{name:22}skipped: {row['skipped']}")
        else:
            ratio = report["ratios_to_bare"].get(name)
            lines.append(
                f"{name:22}{row['live']['windows_per_s']:>11}{ratio:>9}{row['drain']['windows_per_s']:>11}"
                f"{row['windows_per_s_per_replica']:>13}{row['cpu_s_per_1000_windows']:>10}"
            )
    for name, row in report["storage_per_device_day"].items():
        lines.append(
            f"storage {name}: "
            + (f"skipped: {row['skipped']}" if "skipped" in row else f"{row['bytes_per_device_day']} bytes/device-day")
        )
    lines.append("failover: " + json.dumps(report["failover"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--windows-per-device", type=int, default=5)
    parser.add_argument("--publishers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.devices < 1 or args.windows_per_device < 1 or args.publishers < 1:
        parser.error("--devices, --windows-per-device and --publishers must be >= 1")
    host = host_info()
    ingest: dict[str, dict[str, Any]] = {}
    storage: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-scale-") as tmp:
        work = Path(tmp)
        broker = bench_telemetry.Broker(work / "mosquitto-baseline")
        try:
            log("baseline: bare subscriber")
            baseline = bench_telemetry.measure_baseline(
                broker.url, args.devices, args.windows_per_device, args.publishers
            )
        finally:
            broker.stop()
        for replicas in (1, 2):
            ingest[f"sqlite_{replicas}_replica"] = row = ingest_row(
                "sqlite", replicas, args.devices, args.windows_per_device, args.publishers, work
            )
            if replicas == 1 and row.get("complete"):
                windows = row["live"]["stored"] + row["drain"]["stored"]
                storage["sqlite_raw"] = sqlite_storage(Path(row.pop("data_dir")), windows, 2 * args.devices, work)
            row.pop("data_dir", None)
        for replicas in (1, 2):
            ingest[f"postgresql_{replicas}_replica"] = {"skipped": "PostgreSQL backend not in this tree yet"}
        storage["postgresql_raw"] = {"skipped": "PostgreSQL backend not in this tree yet"}
        failover = failover_row(args.devices, args.windows_per_device, args.publishers, work)
    bare = baseline["windows_per_s"]
    report = {
        "host": host,
        "config": vars(args),
        "baseline": baseline,
        "ingest": ingest,
        "ratios_to_bare": {k: round(v["live"]["windows_per_s"] / bare, 3) for k, v in ingest.items() if "live" in v},
        "storage_per_device_day": storage,
        "failover": failover,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

PostgreSQL rows run the same replicas with --database-url on a throwaway cluster started here (Debian's
postgresql package, tests/pg_fixtures.py's PostgresCluster) with durable settings: fsync and
synchronous_commit on, as SQLite's commits are.

Failover: two replicas, the lease holder SIGKILLed as a burst starts: seconds until the other replica
says it leads (GET /v1/cluster), and until the burst is stored by the survivor.
Storage per device-day: bytes per stored raw window (the telemetry schema or file before and after the
row, its empty schema subtracted) x 8,640 windows (one per 10 s), i.e. all raw kept; and with retention
and rollups, bench/telemetry_storage.py's simulated day on each backend (its JSON kept whole).
Rows whose parts are not here print {"skipped": "<reason>"}; no figure is ever estimated.

Usage: python bench/scale.py [--json] [--devices 2000] [--windows-per-device 5] [--publishers 2]
                             [--retention-hours 24]
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
for _p in (str(ROOT), str(BENCH), str(ROOT / "tests")):  # tests/: pg_fixtures' throwaway cluster
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


def hub_cli(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `tandem-hub ARGS` and return its stdout (raises with its stderr on failure)."""
    done = subprocess.run(
        [sys.executable, "-m", "tandem.cloud_hub.cli", *args],
        capture_output=True,
        text=True,
        env={**_env(), **(env or {})},
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tandem-hub {' '.join(args)}: {done.stderr.strip()[-400:]}")
    return done.stdout


class Replica:
    """`tandem-hub serve --cluster --replica-id ID` on a shared data dir; REST on its own port.

    Replicas are started one after another, each once the previous one is subscribed: two replicas
    migrating a fresh PostgreSQL database at once were seen to fail (UniqueViolation on pg_class creating
    telemetry_windows_received), which a rolling start avoids."""

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

    def metrics(self, retries: int = 1) -> dict[str, float]:
        """This replica's tandem_hub_telemetry_* samples from GET /metrics (empty while it is not answering,
        after `retries` tries a second apart: a replica on a loaded host may take seconds to answer)."""
        r = None
        for attempt in range(retries):
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{self.port}/metrics",
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=10,
                )
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 200:
                break
            if attempt + 1 < retries:
                time.sleep(1.0)
        if r is None or r.status_code != 200:
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


def tree_cpu_seconds(proc: psutil.Process | None) -> float:
    """User + system CPU of a process, of its live children, and of the children it has reaped (PostgreSQL's
    postmaster reaps its per-connection backends), so a span's delta counts the whole server."""
    if proc is None:
        return 0.0
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


class SqliteStore:
    """The replicas' shared SQLite files in a data dir, read apart from them (their CPU is what is measured)."""

    backend = "sqlite"
    server: psutil.Process | None = None  # SQLite runs inside the replicas: their CPU includes it

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.hub_args: list[str] = []
        self.env: dict[str, str] = {}

    def count(self) -> int:
        path = self.data_dir / "telemetry.sqlite"
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

    def telemetry_bytes(self) -> int:
        """The telemetry file's size after folding the WAL into it (what the data costs on disk at rest)."""
        path = self.data_dir / "telemetry.sqlite"
        conn = sqlite3.connect(str(path))
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        return path.stat().st_size

    def close(self) -> None:
        pass


class PostgresStore:
    """One database of the bench's PostgreSQL cluster; the hub keeps telemetry in its `telemetry` schema."""

    backend = "postgresql"

    def __init__(self, url: str, server: psutil.Process | None) -> None:
        import psycopg

        self.url = url
        self.server = server  # the postmaster: its CPU (and its backends') is counted beside the replicas'
        self.hub_args = ["--database-url", url]
        self.env = {"TANDEM_HUB_STORAGE_DATABASE_URL": url}
        self._conn = psycopg.connect(url, autocommit=True)

    def count(self) -> int:
        import psycopg

        try:
            row = self._conn.execute("SELECT count(*) FROM telemetry.telemetry_windows").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0]) if row else 0

    def telemetry_bytes(self) -> int:
        """Tables, indexes and TOAST of the telemetry schema (pg_total_relation_size)."""
        row = self._conn.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(format('%I.%I', schemaname, tablename)::regclass)), 0) "
            "FROM pg_tables WHERE schemaname = 'telemetry'"
        ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._conn.close()


Store = SqliteStore | PostgresStore


class Backends:
    """Makes a fresh store per row: a data dir (SQLite), or a new database on a throwaway PostgreSQL cluster
    started here with durable settings (fsync and synchronous_commit on, as SQLite's are)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cluster: Any = None
        self.postgres_skipped: str | None = None
        self._n = 0

    def start_postgres(self) -> None:
        try:
            import psycopg  # noqa: F401
            from pg_fixtures import PostgresCluster, postgres_bindir
        except ImportError as exc:
            self.postgres_skipped = f"PostgreSQL support not importable here ({exc})"
            return
        bindir = postgres_bindir()
        if bindir is None:
            self.postgres_skipped = "no PostgreSQL server (initdb, pg_ctl): apt-get install postgresql"
            return

        class Durable(PostgresCluster):
            def start(self) -> "Durable":
                self._run(
                    str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8"
                )
                options = (
                    f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=400 "
                    "-c shared_buffers=128MB"
                )
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                    "-w", "-t", "60", "start",
                )  # fmt: skip
                return self

        try:
            self.cluster = Durable(bindir).start()
        except Exception as exc:  # a cluster that will not start is a skipped row, with the reason
            self.postgres_skipped = f"PostgreSQL cluster did not start: {exc}"
        else:
            version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True)
            self.postgres_version = version.stdout.strip()

    def new(self, backend: str, tag: str) -> tuple[Store, Path]:
        """A fresh store and a fresh data dir (replicas share the data dir on both backends)."""
        self._n += 1
        data_dir = self.workdir / f"hub-{tag}-{self._n}"
        data_dir.mkdir()
        if backend == "sqlite":
            return SqliteStore(data_dir), data_dir
        pid = int((self.cluster.data / "postmaster.pid").read_text().split()[0])
        return PostgresStore(self.cluster.create_database(), psutil.Process(pid)), data_dir

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def read_token(store: Store, data_dir: Path) -> str:
    out = hub_cli(
        "tokens", "create", "--scope", "read", "--name", "bench", "--data-dir", str(data_dir), "--json", env=store.env
    )
    return str(json.loads(out)["token"])


def ingest_row(
    backends: Backends, backend: str, replicas: int, devices: int, wpd: int, publishers: int
) -> dict[str, Any]:
    """Windows/s and CPU-seconds per 1,000 windows for `replicas` hub replicas on a fresh store and broker;
    with one replica also the bytes per stored window."""
    tag = f"{backend}-{replicas}"
    store, data_dir = backends.new(backend, tag)
    token = read_token(store, data_dir)
    broker = bench_telemetry.Broker(backends.workdir / f"mosquitto-{tag}")
    procs: list[Replica] = []
    try:
        broker_proc = psutil.Process(broker.proc.pid)
        for i in range(replicas):  # one after another (see Replica)
            procs.append(r := Replica(f"r{i}", data_dir, broker.url, token, store.hub_args))
            if not r.wait_subscribed(READY_TIMEOUT_S):
                return {"skipped": f"replica {r.replica_id} did not subscribe: {r.log_path.read_text()[-400:]}"}
        empty = store.telemetry_bytes()
        live = _live(procs, broker_proc, store, devices, wpd, publishers, tag)
        drain = _drain(procs, broker_proc, store, devices, wpd, publishers, tag)
        per_replica = [_stored(r.metrics(retries=5)) for r in procs]
    finally:
        for r in procs:
            r.stop()
        broker.stop()
    stored = store.count()
    full = store.telemetry_bytes()
    store.close()
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
        "storage": {
            "what": "raw windows as stored at ingest (telemetry tables and indexes), before retention and rollups",
            "windows": stored,
            "bytes_per_window": round((full - empty) / max(stored, 1), 1),
            "bytes_per_device_day_all_raw": int((full - empty) / max(stored, 1) * WINDOWS_PER_DEVICE_DAY),
        },
    }


def _measure(procs: list[Replica], broker_proc: psutil.Process, store: Store, target: int, t0: float) -> dict[str, Any]:
    """Wait until the database holds `target` windows; wall seconds since t0 and CPU over that span."""
    cpu0 = [r.cpu_seconds() for r in procs]
    broker_cpu0 = sum(broker_proc.cpu_times()[:2])
    db_cpu0 = tree_cpu_seconds(store.server)
    deadline = t0 + RUN_TIMEOUT_S
    while (stored := store.count()) < target and time.perf_counter() < deadline:
        time.sleep(0.2)
    elapsed = time.perf_counter() - t0
    cpu = [r.cpu_seconds() - c for r, c in zip(procs, cpu0)]
    return {
        "stored": stored,
        "elapsed": elapsed,
        "cpu": cpu,
        "broker_cpu": sum(broker_proc.cpu_times()[:2]) - broker_cpu0,
        "db_cpu": tree_cpu_seconds(store.server) - db_cpu0,  # includes this loop's count query, 5 a second
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
        "database_server_cpu_s_per_1000_windows": round(1000 * m["db_cpu"] / max(done, 1), 4),
        "replicas_and_database_cpu_s_per_1000_windows": round(1000 * (sum(m["cpu"]) + m["db_cpu"]) / max(done, 1), 4),
        "complete": done == windows,
    }


def _live(
    procs: list[Replica], broker_proc: psutil.Process, store: Store, devices: int, wpd: int, publishers: int, tag: str
) -> dict[str, Any]:
    """Publishers and replicas at once: the rate the publishers on this host allow (compare with the bare run)."""
    total = devices * wpd
    ps, go = bench_telemetry.run_publishers(procs[0].mqtt_url, devices, wpd, publishers)
    log(f"{tag} live: {len(procs)} replica(s), {publishers} publishers ready with {total} windows; go")
    t0 = time.perf_counter()
    go.set()
    m = _measure(procs, broker_proc, store, total, t0)
    for p in ps:
        p.join(30)
    return _figures(total, m)


def _drain(
    procs: list[Replica], broker_proc: psutil.Process, store: Store, devices: int, wpd: int, publishers: int, tag: str
) -> dict[str, Any]:
    """The replicas paused (SIGSTOP) while the broker queues a burst for them, then resumed: the rate they
    take windows at when nothing else limits them, and their CPU for it."""
    before = store.count()
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
    m = _measure(procs, broker_proc, store, before + total, time.perf_counter())
    m["stored"] -= before
    return _figures(total, m)


def failover_row(backends: Backends, backend: str, devices: int, wpd: int, publishers: int) -> dict[str, Any]:
    """Two replicas; SIGKILL the lease holder as a burst of windows starts: seconds until the other says it
    leads (GET /v1/cluster), and until the burst is stored by the survivor alone (ingest needs no lease)."""
    tag = f"{backend}-failover"
    store, data_dir = backends.new(backend, tag)
    token = read_token(store, data_dir)
    broker = bench_telemetry.Broker(backends.workdir / f"mosquitto-{tag}")
    procs: list[Replica] = []
    total = devices * wpd
    try:
        for i in range(2):  # one after another (see Replica)
            procs.append(r := Replica(f"r{i}", data_dir, broker.url, token, store.hub_args))
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
            if burst_s is None and store.count() >= total:
                burst_s = time.perf_counter() - killed_at
            time.sleep(0.1)
        for p in ps:
            p.join(30)
        stored = store.count()
        epoch = survivor.cluster().get("epoch")
    finally:
        for r in procs:
            r.stop()
        broker.stop()
        store.close()
    return {
        "backend": backend,
        "replicas": 2,
        "killed": "the lease holder, SIGKILL",
        "takeover_s": round(takeover_s, 2) if takeover_s is not None else None,
        "epoch_after": epoch,
        "burst_windows": total,
        "burst_stored": stored,
        "burst_stored_s_after_kill": round(burst_s, 3) if burst_s is not None else None,
        "survivor_windows_per_s": round(stored / burst_s, 1) if burst_s else None,
    }


def storage_with_retention(backends: Backends, backend: str, hours: float) -> dict[str, Any]:
    """Bytes per device-day once retention and rollups run: bench/telemetry_storage.py (its own simulated day
    through the real TelemetryStore and retention pass) on this backend, its JSON kept whole."""
    script = BENCH / "telemetry_storage.py"
    if not script.exists():
        return {"skipped": "bench/telemetry_storage.py (retention + rollups) is not in this tree"}
    cmd = [sys.executable, str(script), "--json", "--devices", "20", "--hours", str(hours)]
    if backend == "postgresql":
        cmd += ["--interval-s", "600", "--database-url", backends.cluster.create_database()]
    log(f"storage with retention on {backend}: {' '.join(cmd[1:])}")
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=RUN_TIMEOUT_S * 2)
    if done.returncode != 0:
        return {"skipped": f"bench/telemetry_storage.py failed: {done.stderr.strip()[-300:]}"}
    return {"command": " ".join(["python", *cmd[1:]]).replace(str(ROOT) + "/", ""), "result": json.loads(done.stdout)}


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
    for name, row in report["ingest"].items():
        if "storage" in row:
            st = row["storage"]
            lines.append(
                f"storage {name}: {st['bytes_per_window']} bytes/raw window, {st['bytes_per_device_day_all_raw']} per device-day all raw"
            )
    for name, row in report["storage_with_retention"].items():
        lines.append(f"storage {name} (bench/telemetry_storage.py): " + json.dumps(row)[:300])
    for name, row in report["failover"].items():
        lines.append(f"failover {name}: " + json.dumps(row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--windows-per-device", type=int, default=5)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument(
        "--retention-hours",
        type=float,
        default=24.0,
        help="simulated hours of bench/telemetry_storage.py (raw retention + rollups) per backend; 0 skips it",
    )
    args = parser.parse_args(argv)
    if args.devices < 1 or args.windows_per_device < 1 or args.publishers < 1:
        parser.error("--devices, --windows-per-device and --publishers must be >= 1")
    host = host_info()
    ingest: dict[str, dict[str, Any]] = {}
    failover: dict[str, dict[str, Any]] = {}
    retained: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-scale-") as tmp:
        backends = Backends(Path(tmp))
        broker = bench_telemetry.Broker(backends.workdir / "mosquitto-baseline")
        try:
            log("baseline: bare subscriber")
            baseline = bench_telemetry.measure_baseline(
                broker.url, args.devices, args.windows_per_device, args.publishers
            )
        finally:
            broker.stop()
        try:
            backends.start_postgres()
            for backend in ("sqlite", "postgresql"):
                skipped = backends.postgres_skipped if backend == "postgresql" else None
                for replicas in (1, 2):
                    name = f"{backend}_{replicas}_replica"
                    ingest[name] = (
                        {"skipped": skipped}
                        if skipped
                        else ingest_row(
                            backends, backend, replicas, args.devices, args.windows_per_device, args.publishers
                        )
                    )
                failover[backend] = (
                    {"skipped": skipped}
                    if skipped
                    else failover_row(backends, backend, args.devices, args.windows_per_device, args.publishers)
                )
                if args.retention_hours > 0:
                    retained[backend] = (
                        {"skipped": skipped}
                        if skipped
                        else storage_with_retention(backends, backend, args.retention_hours)
                    )
        finally:
            backends.stop()
    bare = baseline["windows_per_s"]
    report = {
        "host": host,
        "postgresql": getattr(backends, "postgres_version", None),
        "config": vars(args),
        "baseline": baseline,
        "ingest": ingest,
        "ratios_to_bare": {k: round(v["live"]["windows_per_s"] / bare, 3) for k, v in ingest.items() if "live" in v},
        "storage_with_retention": retained,
        "failover": failover,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Faults the fleet will meet, against real processes: windows sent / stored / missing / duplicated per fault.

Each fault runs real parts on loopback: the hub's own generated Mosquitto
(cloud_hub.broker.MosquittoBroker: persistence as the hub's user, fleet-sized queues), the
hub's telemetry service (SQLite, sequence tracking and resend requests) and agents'
TelemetryServices (disk outbox, replay store) recording traffic from threads.

  broker_sigkill / broker_sigterm  the broker killed (-9) or stopped (TERM) and restarted on its
                                   port, `--restarts` times, under traffic
  hub_down                         the hub's telemetry away `--hub-down-s` while `--devices` agents
                                   keep sending (the broker queues for the hub's persistent session)
  disk_full                        an agent's outbox on a tmpfs filled to ENOSPC for `--disk-full-s`
                                   (needs root to mount; reported as skipped otherwise)
  clock_skew                       agents at -1 h and +1 h: windows visible in the hub's last 2 minutes
  two_hubs                         a second hub on the same data dir
  hub_sigkill_rollout              a real hub process killed -9 and restarted at each of `--hub-kills`
                                   (sending, watching, between_waves) during a 3-wave rollout to
                                   `--rollout-devices` devices running the real OTA client
                                   (bench/faults_rollout.py; digits trained and compiled once into
                                   `--models-dir`)

Per telemetry fault: sent (last sequence per agent, summed), stored (distinct rows at the hub),
missing (sent - stored), duplicated (rows stored twice: the primary key makes it 0; redeliveries
the hub dropped as duplicates are reported apart), and the end-to-end counters: gaps the hub
asked for again and recovered, gaps finally lost (hub) and windows lost locally (agents).

Per rollout fault: per kill the phase and the states seen just before it; the rollout's status,
devices not committed, and devices commanded into any (action, version) but (install, new version).

Scale: the defaults are sized for a 2-core dev box shared with other work (4 agents at 20 windows/s
each, 3 restarts); full scale is `--restarts 10`, `--only hub_down --devices 1000 --window-s 10
--rate 1 --hub-down-s 300` (past MAX_AGENTS_PER_PROCESS, hub_down runs its agents in child
processes of at most that many: see there), `--disk-full-s 120` (README's reliability section has
the figures measured so).

Usage: python bench/faults.py [--json] [--only broker_sigkill,two_hubs] [--devices 4] [--restarts 3]
Progress goes to stderr; the result (JSON with --json, else a table) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests", ROOT / "examples" / "digits", ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import numpy as np  # noqa: E402

from tandem.cloud_hub.broker import MosquittoBroker  # noqa: E402
from tandem.cloud_hub.telemetry import TelemetryIngestService, TelemetryServiceConfig  # noqa: E402
from tandem.cloud_hub.telemetry.gaps import GapPolicy  # noqa: E402
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService  # noqa: E402
from faults_rollout import hub_sigkill_mid_rollout  # noqa: E402

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")
GAPS = GapPolicy(ask_after_s=1.0, ask_every_s=2.0, max_asks=5)
# paho-mqtt's network loop calls select(), which cannot watch a file descriptor >= 1024 (FD_SETSIZE): it
# reads that as "connection lost" and reconnects forever, silently. Each in-process agent holds ~6 fds
# (socket, paho's socketpair, SQLite db/wal/shm), so past ~150 agents in one process the later agents and a
# restarted hub never deliver (measured: 300 agents, 391 sockets above fd 1023, 169 devices ever stored).
MAX_AGENTS_PER_PROCESS = 150
FAULTS = ("broker_sigkill", "broker_sigterm", "hub_down", "disk_full", "clock_skew", "two_hubs", "hub_sigkill_rollout")


def say(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


class Fleet:
    """A broker, the hub's telemetry service and `n` agents with a traffic thread each."""

    def __init__(
        self,
        root: Path,
        n: int,
        window_s: float,
        rate: float,
        agent_dir: Callable[[int], Path] | None = None,
        skews: list[float] | None = None,
    ) -> None:
        if n > MAX_AGENTS_PER_PROCESS:
            raise ValueError(
                f"--devices {n}: at most {MAX_AGENTS_PER_PROCESS} agents fit in one process (paho-mqtt's select() "
                "loop cannot use file descriptors >= 1024; hub_down spreads more over child processes)"
            )
        self.root = root
        self.broker = MosquittoBroker.start(root / "mosquitto")
        self.port = self.broker.port
        self.hub = self._hub()
        self.agents: list[TelemetryService] = []
        for i in range(n):
            skew = (skews or [0.0] * n)[i]
            self.agents.append(
                TelemetryService(
                    self.broker.url,
                    f"dev-{i:04d}",
                    MODEL,
                    agent_dir(i) if agent_dir else root / f"agent-{i}",
                    window_s=window_s,
                    clock=lambda s=skew: time.time() + s,
                ).start()
            )
        self._stop = threading.Event()
        # one traffic thread for the whole fleet: a thread per agent (plus each service's own three)
        # starved 1,000 agents on 2 cores (9 windows of 10 s each in 27 minutes)
        self._threads = [threading.Thread(target=self._traffic, args=(rate,), daemon=True)]
        for t in self._threads:
            t.start()

    def _hub(self) -> TelemetryIngestService:
        hub = TelemetryIngestService(
            self.root / "hub",
            self.broker.url,
            lambda name, version: None,
            TelemetryServiceConfig(eval_interval_s=3600, gaps=GAPS, gap_tick_s=0.5),
        )
        hub.start()
        hub.ingest.wait_subscribed(20)
        return hub

    def _traffic(self, rate: float) -> None:
        x = np.zeros((1, 8), np.float32)
        while not self._stop.wait(1.0 / rate):
            for agent in self.agents:
                agent.record("edge", 2.0, confidence=0.9, label=1, inputs=x)

    def restart_broker(self, sig: int) -> None:
        self.broker.process.send_signal(sig)
        self.broker.process.wait(20)
        self.broker = MosquittoBroker.start(self.root / "mosquitto", port=self.port)

    def hub_away(self, seconds: float) -> None:
        self.hub.stop()
        time.sleep(seconds)
        self.hub = self._hub()

    def finish(self, settle_s: float, shards: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Stop traffic, flush every agent, wait for delivery and the gap tracker, then count.

        `shards`: what agents in child processes (`run_shard`) reported, counted with this process's own.
        """
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for a in self.agents:
            a.flush()
        sent = {a.device_id: a.outbox.last_sequence for a in self.agents}
        local = {
            "lost_local_agents": sum(a.unstored_dropped for a in self.agents),
            "outbox_dropped_agents": sum(a.outbox.dropped_total for a in self.agents),
            "resent_by_agents": sum(a.outbox.resent for a in self.agents),
        }
        for shard in shards or []:
            sent.update(shard["sent"])
            for key in local:
                local[key] += shard[key]
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            stored = self.hub.store.count_windows()
            gaps = self.hub.gaps.stats()
            if stored >= sum(sent.values()) or (gaps["open"] == 0 and stored + gaps["lost"] >= sum(sent.values())):
                break
            time.sleep(0.5)
        time.sleep(1.0)  # late redeliveries would land now
        stored_rows = self.hub.store.db.query(
            "SELECT device_id, COUNT(*) AS n, COUNT(DISTINCT sequence) AS d FROM telemetry_windows GROUP BY device_id"
        )
        stored = sum(r["d"] for r in stored_rows)
        gaps = self.hub.gaps.stats()
        out = {
            "agents": len(sent),
            "sent": sum(sent.values()),
            "stored": stored,
            "missing": sum(sent.values()) - stored,
            "duplicated": sum(r["n"] - r["d"] for r in stored_rows),
            "redeliveries_dropped_as_duplicates": self.hub.ingest.stats.duplicates,
            "gaps_recovered_by_resend": gaps["recovered_since_start"],
            "gaps_open": gaps["open"],
            "gaps_lost_hub": gaps["lost"],
            "resend_requests": gaps["resend_requests"],
            **local,
        }
        return out

    def close(self) -> None:
        self._stop.set()
        for a in self.agents:
            with contextlib.suppress(Exception):
                a.stop(flush=False, drain_timeout_s=0)
        with contextlib.suppress(Exception):
            self.hub.stop()
        with contextlib.suppress(Exception):
            self.broker.stop()


def broker_restarts(root: Path, args: argparse.Namespace, sig: int) -> dict[str, Any]:
    fleet = Fleet(root, args.devices, args.window_s, args.rate)
    try:
        for i in range(args.restarts):
            time.sleep(args.between_s)
            say(f"broker {signal.Signals(sig).name} {i + 1}/{args.restarts}")
            fleet.restart_broker(sig)
        time.sleep(args.between_s)
        return {"restarts": args.restarts, "signal": signal.Signals(sig).name, **fleet.finish(args.settle_s)}
    finally:
        fleet.close()


def hub_down(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Over MAX_AGENTS_PER_PROCESS devices, the agents run in child processes (`run_shard`) of at most that many."""
    per = min(args.devices, MAX_AGENTS_PER_PROCESS)
    children = [range(i, min(i + per, args.devices)) for i in range(per, args.devices, per)]
    fleet = Fleet(root, per, args.window_s, args.rate)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stop = root / "stop-shards"
        for i, ids in enumerate(children):
            cmd = [sys.executable, __file__, "--shard", f"{ids.start}:{ids.stop}", "--shard-root", str(root)]
            cmd += ["--shard-broker", fleet.broker.url, "--window-s", str(args.window_s), "--rate", str(args.rate)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        time.sleep(args.between_s)
        say(f"hub away {args.hub_down_s:g}s under {args.devices} agents ({len(procs) + 1} processes)")
        fleet.hub_away(args.hub_down_s)
        time.sleep(args.between_s)
        stop.touch()
        reports = [root / f"shard-{ids.start}.json" for ids in children]
        deadline = time.monotonic() + 300
        while not all(r.exists() for r in reports) and time.monotonic() < deadline:
            time.sleep(0.5)
        shards = [json.loads(r.read_text()) for r in reports]  # a missing one is an error: say so, not 0
        result = fleet.finish(args.settle_s, shards)  # the children still answer resend requests meanwhile
        (root / "shards-done").touch()
        for proc in procs:
            proc.wait(60)
        return {"hub_down_s": args.hub_down_s, "processes": len(procs) + 1, **result}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        fleet.close()


def run_shard(spec: str, root: Path, broker_url: str, window_s: float, rate: float) -> int:
    """A child's agents dev-START..dev-STOP-1: traffic until `root/stop-shards` appears, then flush,
    let the publishers deliver, and write what was sent to `root/shard-START.json`."""
    start, stop = (int(x) for x in spec.split(":"))
    agents = [
        TelemetryService(broker_url, f"dev-{i:04d}", MODEL, root / f"agent-{i}", window_s=window_s).start()
        for i in range(start, stop)
    ]
    x = np.zeros((1, 8), np.float32)
    while not (root / "stop-shards").exists():
        time.sleep(1.0 / rate)
        for agent in agents:
            agent.record("edge", 2.0, confidence=0.9, label=1, inputs=x)
    for agent in agents:
        agent.flush()
    deadline = time.monotonic() + 120
    for agent in agents:
        agent.publisher.wait_drained(max(0.1, deadline - time.monotonic()))
    report = {
        "sent": {a.device_id: a.outbox.last_sequence for a in agents},
        "lost_local_agents": sum(a.unstored_dropped for a in agents),
        "outbox_dropped_agents": sum(a.outbox.dropped_total for a in agents),
        "resent_by_agents": sum(a.outbox.resent for a in agents),
    }
    (root / f"shard-{start}.json").write_text(json.dumps(report))
    # keep answering the hub's resend requests while the parent settles
    while (root / "stop-shards").exists() and not (root / "shards-done").exists():
        time.sleep(0.5)
    for agent in agents:
        agent.stop(flush=False, drain_timeout_s=0)
    return 0


def disk_full(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    disk = root / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs ({done.stderr.strip()}); needs root"}
    fleet = None
    try:
        fleet = Fleet(root, 1, args.window_s, args.rate, agent_dir=lambda i: disk / "agent")
        time.sleep(args.between_s)
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        say(f"agent disk full for {args.disk_full_s:g}s")
        time.sleep(args.disk_full_s)
        agent = fleet.agents[0]
        failing = {"write_error_seen": agent.write_error is not None, "held_in_memory": len(agent._closed)}
        filler.unlink()
        time.sleep(args.between_s)
        return {
            "disk_full_s": args.disk_full_s,
            **failing,
            "recovered": agent.write_error is None,
            **fleet.finish(args.settle_s),
        }
    finally:
        if fleet is not None:
            fleet.close()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def clock_skew(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    fleet = Fleet(root, 2, args.window_s, args.rate, skews=[-3600.0, 3600.0])
    try:
        time.sleep(args.between_s)
        result = fleet.finish(args.settle_s)
        _, recent = fleet.hub.store.list_windows(since=time.time() - 120, limit=1)
        bucket_s = fleet.hub.engine.config.bucket_s
        current = int(time.time() // bucket_s)
        buckets = [b for per in fleet.hub.engine._buckets.values() for b in per]
        return {
            "skews_s": [-3600, 3600],
            **result,
            "visible_in_last_2_min": recent,
            "drift_buckets_outside_the_last_minute": sum(1 for b in buckets if b < current - 60 / bucket_s),
            "offsets_s": fleet.hub.clocks.offsets(),
        }
    finally:
        fleet.close()


def two_hubs(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub
    from tandem.cloud_hub.storage.datadir import DataDirLockedError

    config = HubConfig.from_keys(
        {"data_dir": root / "hub", "http.port": 0, "grpc.port": 0, "mqtt.url": "mqtt://127.0.0.1:1"}
    )
    first = Hub(config)
    try:
        Hub(config).stop()
        return {"second_hub_refused": False}
    except DataDirLockedError as exc:
        return {"second_hub_refused": True, "error": str(exc)}
    finally:
        first.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--only", default=",".join(FAULTS), help=f"comma-separated subset of {', '.join(FAULTS)}")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--window-s", type=float, default=0.05, help="agent window length (short: many windows)")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second per agent")
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--between-s", type=float, default=2.0)
    p.add_argument("--hub-down-s", type=float, default=10.0)
    p.add_argument("--disk-full-s", type=float, default=5.0)
    p.add_argument("--settle-s", type=float, default=60.0)
    p.add_argument("--hub-kills", default="sending,watching,between_waves,watching", help="phases to kill the hub at")
    p.add_argument("--rollout-devices", type=int, default=6)
    p.add_argument("--rollout-watch-s", type=float, default=3.0, help="each device's health watch")
    p.add_argument("--hub-down-rollout-s", type=float, default=2.0, help="how long the killed hub stays down")
    p.add_argument("--rollout-timeout-s", type=float, default=300.0)
    p.add_argument(
        "--models-dir",
        default=str(Path.home() / ".cache" / "tandem-bench" / "faults-models"),
        help="digits trained and compiled here once, reused by later runs",
    )
    p.add_argument("--shard", help=argparse.SUPPRESS)  # START:STOP, a child process of hub_down's agents
    p.add_argument("--shard-root", help=argparse.SUPPRESS)
    p.add_argument("--shard-broker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.shard:
        return run_shard(args.shard, Path(args.shard_root), args.shard_broker, args.window_s, args.rate)
    wanted = [f for f in args.only.split(",") if f]
    unknown = set(wanted) - set(FAULTS)
    if unknown:
        p.error(f"unknown fault(s) {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    runners = {
        "broker_sigkill": lambda r: broker_restarts(r, args, signal.SIGKILL),
        "broker_sigterm": lambda r: broker_restarts(r, args, signal.SIGTERM),
        "hub_down": lambda r: hub_down(r, args),
        "disk_full": lambda r: disk_full(r, args),
        "clock_skew": lambda r: clock_skew(r, args),
        "two_hubs": lambda r: two_hubs(r, args),
        "hub_sigkill_rollout": lambda r: hub_sigkill_mid_rollout(r, args, say, dict(os.environ)),
    }
    results: dict[str, Any] = {}
    for name in wanted:
        say(f"fault {name}")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"tandem-fault-{name}-") as tmp:
            try:
                results[name] = runners[name](Path(tmp))
            except Exception as exc:  # one broken fault must not hide the others' figures
                results[name] = {"error": repr(exc)}
        results[name]["wall_s"] = round(time.monotonic() - started, 1)
    report = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "params": {k: v for k, v in vars(args).items() if k not in ("json", "only")},
        "faults": results,
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for name, r in results.items():
            print(f"{name:<16} " + " ".join(f"{k}={v}" for k, v in r.items() if not isinstance(v, dict)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

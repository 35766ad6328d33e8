"""Two hub replicas on one database and data dir; the lease holder is SIGKILLed mid-rollout or mid-burst.

Real parts on loopback: Mosquitto, two `Hub` processes in cluster mode (real SQLite files in one data
dir, replica-a and replica-b), devices running the agent's real OTA client (tests/ota_fixtures.SimDevice)
or its real telemetry service. Devices and operators reach "the hub" through one address, as they would
through a load balancer: `FailoverProxy`, a TCP relay to the first replica that accepts (the one stand-in
here; any L4 balancer does this).

rollout:    a rollout of 1.1.0 to `--rollout-devices` in waves 34/67/100; the lease holder is killed at
            `--kill-at` of wave 2 and stays dead. Reported: takeover_s (SIGKILL -> the other replica's
            GET /v1/cluster says it leads), the lease epochs, the wave before and after, the rollout's end,
            devices commanded into another version (an MQTT observer of every command topic).
telemetry:  `--devices` agents send windows of `--window-s` at `--rate` requests/s; the lease holder is
            killed after `--between-s` and the burst goes on. Reported: sent / stored / missing / duplicated
            counted in the shared database after the settle, and how many windows the agents sent again when
            asked (resent_by_agents: the killed replica's in-flight share, recovered through gap tracking).

Both on SQLite files in the shared data dir by default; `--database-url postgresql://...` puts the
replicas' state in PostgreSQL (an empty database) instead.

Usage: python bench/faults_replicas.py [--json] [--only rollout,telemetry] [--kill-at sending]
       [--database-url postgresql://user@host:port/db]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
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

import httpx  # noqa: E402

from faults_rollout import (  # noqa: E402
    PHASES,
    CommandObserver,
    HubProcess,
    _free_port,
    _phase_reached,
    post_rollout,
    prepare_models,
    seed_fleet,
    start_devices,
)

SCENARIOS = ("rollout", "telemetry")


def say(msg: str) -> None:
    print(f"[replicas] {msg}", file=sys.stderr, flush=True)


class FailoverProxy:
    """A TCP relay on loopback to the first backend that accepts a connection (a load balancer's job)."""

    def __init__(self, backends: list[int], port: int = 0) -> None:
        self.backends = backends
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = None
        for port in self.backends:
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
                break
            except OSError:
                continue
        if upstream is None:
            client.close()
            return
        upstream.settimeout(None)

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        t.start()
        pipe(client, upstream)
        t.join(600)
        client.close()
        upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


def replica_keys(base: dict[str, Any], name: str) -> dict[str, Any]:
    return {**base, "http.port": _free_port(), "grpc.port": _free_port(), "cluster.replica_id": name}


def cluster_status(port: int) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/v1/cluster", headers=HEADERS, timeout=2)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


HEADERS: dict[str, str] = {}


def wait_leader(ports: dict[str, int], timeout_s: float, running: str | None = None) -> tuple[str, dict[str, Any]]:
    """The replica whose GET /v1/cluster says it leads (and, with `running`, runs that singleton)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, port in ports.items():
            status = cluster_status(port)
            if status and status["leader"] and (running is None or running in status["singletons"]):
                return name, status
        time.sleep(0.05)
    raise RuntimeError(f"no replica took the lease within {timeout_s:g}s")


def start_replicas(keys: dict[str, Any], env: dict[str, str]) -> tuple[dict[str, HubProcess], dict[str, int]]:
    """replica-a first (it takes the lease), then replica-b."""
    procs: dict[str, HubProcess] = {}
    ports: dict[str, int] = {}
    for name in ("replica-a", "replica-b"):
        k = replica_keys(keys, name)
        procs[name], ports[name] = HubProcess(k, env), k["http.port"]
        procs[name].start()
        if name == "replica-a":
            wait_leader({name: ports[name]}, 30)
    return procs, ports


def rollout_failover(root: Path, args: Any, env: dict[str, str]) -> dict[str, Any]:
    from ota_fixtures import Broker

    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    rel = prepare_models(Path(args.models_dir), say)
    broker = Broker(root / "mosquitto")
    proxy_port = _free_port()
    keys: dict[str, Any] = {
        "data_dir": str(root / "hub"),
        "mqtt.url": broker.url,
        "publishers.trust_on_first_use": True,
        "telemetry.enabled": False,
        "rollouts.tick_s": 0.2,
        "rollouts.watch_s": args.rollout_watch_s,
        "http.public_url": f"http://127.0.0.1:{proxy_port}",
        "cluster.enabled": True,
        **_storage(args),
    }
    setup = Hub(HubConfig.from_keys({k: v for k, v in keys.items() if not k.startswith("cluster.")}))
    device_token, operator, trusted_pem, ids = seed_fleet(setup, rel, args.rollout_devices)
    HEADERS["Authorization"] = f"Bearer {operator}"
    procs: dict[str, HubProcess] = {}
    devices: list[Any] = []
    observer: CommandObserver | None = None
    proxy: FailoverProxy | None = None
    try:
        procs, ports = start_replicas(keys, env)
        proxy = FailoverProxy([ports["replica-a"], ports["replica-b"]], proxy_port)
        observer = CommandObserver(broker.url, trusted_pem)
        start_devices(devices, root / "devices", rel, broker.url, device_token, trusted_pem, ids, args.rollout_watch_s)
        http = httpx.Client(base_url=proxy.url, headers=HEADERS, timeout=10)
        rid = post_rollout(http)
        deadline = time.monotonic() + args.rollout_timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = _get(http, f"/v1/rollouts/{rid}") or body
            if body.get("status") != "running" or _phase_reached(body, args.kill_at, 2):
                break
            time.sleep(0.05)
        if body.get("status") != "running":
            raise RuntimeError(f"the rollout ended before the kill: {body.get('status')} {body.get('reason')}")
        holder, before = wait_leader(ports, 5, "rollouts")
        other = next(n for n in ports if n != holder)
        seen = {
            "wave": body.get("wave"),
            "states": sorted({f"{d['device_id']}:{d['state']}/{d.get('step')}" for d in body["device_states"]}),
        }
        t_kill = time.monotonic()
        wall_kill = time.time()
        procs[holder].kill()
        say(f"SIGKILL {holder} (lease epoch {before['epoch']}) at {args.kill_at} of wave {seen['wave']}")
        new_holder, after = wait_leader({other: ports[other]}, 30, "rollouts")
        takeover_s = time.monotonic() - t_kill
        say(f"{new_holder} leads after {takeover_s:.2f}s (epoch {after['epoch']})")
        resumed = _get(http, f"/v1/rollouts/{rid}") or {}
        while time.monotonic() < deadline:
            body = _get(http, f"/v1/rollouts/{rid}") or body
            if body.get("status") not in ("running", "paused"):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # late commands would land now
        commanded = {d: sorted(set(v)) for d, v in observer.seen.items()}
        final = {d.device_id: d.client.store.active_version for d in devices}
        events = _get(http, f"/v1/rollouts/{rid}?events=200") or {}
        http.close()
        return {
            "devices": len(devices),
            "killed": holder,
            "kill_at": args.kill_at,
            "wave_at_kill": seen["wave"],
            "states_at_kill": seen["states"],
            "wave_when_it_led": resumed.get("wave"),
            "takeover_s": round(takeover_s, 2),
            "lease_acquired_after_kill_s": round(after["lease"]["acquired_at"] - wall_kill, 2),
            "epochs": [before["epoch"], after["epoch"]],
            "new_holder": new_holder,
            "status": body.get("status"),
            "reason": body.get("reason", ""),
            "devices_on_new_version": sum(v == "1.1.0" for v in final.values()),
            "devices_not_committed": sorted(
                d["device_id"] for d in body.get("device_states", []) if d["state"] != "committed"
            ),
            "devices_commanded_into_another_version": {
                d: v for d, v in commanded.items() if v != [("install", "1.1.0")]
            },
            "commands_received": sum(len(v) for v in observer.seen.values()),
            "waves_opened": [e["detail"]["wave"] for e in events.get("events", []) if e["kind"] == "wave_opened"],
            # the new holder's first gate decision: on the wave the old holder was in (not wave 1 again)
            "first_gate_after_kill": next(
                (
                    e["detail"].get("wave")
                    for e in events.get("events", [])
                    if e["at"] >= wall_kill and e["kind"] in ("gate_passed", "halted")
                ),
                None,
            ),
        }
    finally:
        for d in devices:
            d.stop()
        if observer is not None:
            observer.close()
        for p in procs.values():
            p.kill()
        if proxy is not None:
            proxy.close()
        broker.stop()


def _get(http: httpx.Client, path: str) -> dict[str, Any] | None:
    try:
        r = http.get(path)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def telemetry_failover(root: Path, args: Any, env: dict[str, str]) -> dict[str, Any]:
    from types import SimpleNamespace

    from faults import Fleet

    from tandem.cloud_hub.telemetry.gaps import GapTracker
    from tandem.cloud_hub.telemetry.store import TelemetryStore

    hub_dir = root / "hub"

    class ReplicaFleet(Fleet):
        """bench/faults.py's fleet with two hub replica processes instead of its in-process hub."""

        def _hub(self) -> Any:
            from tandem.cloud_hub.config import HubConfig
            from tandem.cloud_hub.hub import Hub

            keys = {"data_dir": str(hub_dir), "mqtt.url": self.broker.url, "rollouts.enabled": False, **_storage(args)}
            setup = Hub(HubConfig.from_keys(keys))  # a read token for GET /v1/cluster, then it lets go
            try:
                HEADERS["Authorization"] = f"Bearer {setup.tokens.create('bench', 'read').token}"
            finally:
                setup.stop()
            keys["cluster.enabled"] = True
            self.procs, self.ports = start_replicas(keys, env)
            return _SharedView(TelemetryStore.open(args.database_url or hub_dir))

    class _SharedView:
        """What Fleet.finish counts, read from the replicas' shared database."""

        def __init__(self, store: TelemetryStore) -> None:
            self.store = store
            self.gaps = GapTracker(store, lambda device, payload: None)
            self.ingest = SimpleNamespace(stats=SimpleNamespace(duplicates=None))  # per replica, not summed here

        def stop(self) -> None:
            self.store.close()

    fleet = ReplicaFleet(root, args.devices, args.window_s, args.rate, agent_dir=lambda i: root / f"agent-{i}")
    try:
        time.sleep(args.between_s)
        holder = _holder(hub_dir, args.database_url)
        stored_at_kill = _stored_by(args.database_url or hub_dir)
        t_kill = time.monotonic()
        fleet.procs[holder].kill()
        say(f"SIGKILL {holder} mid-burst ({stored_at_kill} windows stored so far)")
        other = next(n for n in fleet.ports if n != holder)
        new = _wait_holder(hub_dir, args.database_url, other, 30)
        takeover_s = time.monotonic() - t_kill
        time.sleep(args.between_s)
        result = fleet.finish(args.settle_s)
        for per_process in ("redeliveries_dropped_as_duplicates", "gaps_recovered_by_resend", "resend_requests"):
            result.pop(per_process, None)  # counted inside each replica process, not in the shared database
        return {
            "killed": holder,
            "stored_at_kill": stored_at_kill,
            "lease_takeover_s": round(takeover_s, 2),
            "new_holder": new,
            **result,
        }
    finally:
        for p in getattr(fleet, "procs", {}).values():
            p.kill()
        fleet.close()


def _storage(args: Any) -> dict[str, Any]:
    return {"storage.database_url": args.database_url} if args.database_url else {}


def _holder(hub_dir: Path, database_url: str | None) -> str:
    from tandem.cloud_hub.cluster import LEASE_NAME, LeaseTable
    from tandem.cloud_hub.storage import open_database

    db = open_database(database_url, schema="hub") if database_url else open_database(hub_dir / "hub.db")
    try:
        state = LeaseTable(db).get(LEASE_NAME)
    finally:
        db.close()
    if state is None or state.expires_at < time.time():
        raise RuntimeError("no replica holds the lease")
    return state.holder


def _wait_holder(hub_dir: Path, database_url: str | None, name: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError):
            if _holder(hub_dir, database_url) == name:
                return name
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not take the lease within {timeout_s:g}s")


def _stored_by(target: str | Path) -> int:
    from tandem.cloud_hub.telemetry.store import TelemetryStore

    store = TelemetryStore.open(target)
    try:
        return store.count_windows()
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    p.add_argument("--kill-at", choices=PHASES, default="sending", help="the phase of wave 2 the holder dies in")
    p.add_argument("--rollout-devices", type=int, default=6)
    p.add_argument("--rollout-watch-s", type=float, default=3.0)
    p.add_argument("--rollout-timeout-s", type=float, default=300.0)
    p.add_argument("--models-dir", default=str(Path(tempfile.gettempdir()) / "tandem-faults-models"))
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--window-s", type=float, default=0.05)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--between-s", type=float, default=3.0)
    p.add_argument("--settle-s", type=float, default=60.0)
    p.add_argument("--database-url", help="the replicas' state in this (empty) PostgreSQL database; default SQLite")
    args = p.parse_args(argv)
    wanted = [s for s in args.only.split(",") if s]
    if set(wanted) - set(SCENARIOS):
        p.error(f"unknown scenario(s) {sorted(set(wanted) - set(SCENARIOS))}; choose from {', '.join(SCENARIOS)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    runs: dict[str, Callable[[Path], dict[str, Any]]] = {
        "rollout": lambda r: rollout_failover(r, args, env),
        "telemetry": lambda r: telemetry_failover(r, args, env),
    }
    out: dict[str, Any] = {}
    for name in wanted:
        with tempfile.TemporaryDirectory(prefix=f"replicas-{name}-") as tmp:
            say(f"{name} ...")
            t0 = time.monotonic()
            try:
                out[name] = runs[name](Path(tmp))
            except Exception as exc:
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            out[name]["seconds"] = round(time.monotonic() - t0, 1)
    result = {
        "scenarios": out,
        "params": {k: v for k, v in vars(args).items() if k not in ("json", "only", "database_url")},
        "backend": "postgresql" if args.database_url else "sqlite",
        "host": {"cpus": os.cpu_count(), "load_1m": os.getloadavg()[0], "python": platform.python_version()},
    }
    print(json.dumps(result, indent=2) if args.json else json.dumps(out, indent=2))
    return 0 if all("error" not in r for r in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

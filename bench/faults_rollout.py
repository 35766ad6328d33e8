"""bench/faults.py's "hub SIGKILL mid-rollout": a real hub process killed -9 and restarted during a rollout.

Real parts on loopback: Mosquitto, a `Hub` in its own process (SQLite, HTTP artifacts, the rollout
controller), and devices running the agent's real OTA client, A/B store and digits models
(tests/ota_fixtures.SimDevice). The hub is killed at each phase asked for (`sending`: right after a
wave's commands went out; `watching`: while a device of the wave is in its health watch;
`between_waves`: when a wave's devices have all committed), then restarted on the same ports and
data dir. Per kill: the phase, the wave and device states seen just before it, and the time down.
At the end: the rollout's status, every device's version, and, from an MQTT observer of every
device's command topic, each (action, version) a device was commanded into; a device commanded
into a second version (a rollback) or rolled back is a failure of the promise.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import paho.mqtt.client as mqtt

PHASES = ("sending", "watching", "between_waves")
HUB_CHILD = """
import json, sys, threading
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
hub = Hub(HubConfig.from_keys(json.loads(sys.argv[1]))).start()
print("ready", hub.http_url, flush=True)
threading.Event().wait()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_models(cache: Path, say: Callable[[str], None]) -> dict[str, Path]:
    """digits trained and compiled once into `cache` (reused by later runs), and 1.1.0 derived from it."""
    import train  # examples/digits/train.py
    from ota_fixtures import compile_digits, derive

    cache.mkdir(parents=True, exist_ok=True)
    digits = cache / "digits"
    if not (digits / "test.npz").exists():
        say(f"training digits into {digits}")
        train.train(digits)
    base = cache / "1.0.0"
    if not (base / "manifest.json").exists():
        say("compiling digits 1.0.0")
        compile_digits(digits, cache / "1.0.0.partial", "1.0.0", cache / "compiler.pem").rename(base)
    good = cache / "1.1.0"
    if not (good / "manifest.json").exists():
        derive(base, cache / "1.1.0.partial", "1.1.0").rename(good)
    return {"digits": digits, "1.0.0": base, "1.1.0": good}


class HubProcess:
    """A hub in a child process with fixed ports, so devices' artifact URLs survive its restart."""

    def __init__(self, keys: dict[str, Any], env: dict[str, str]) -> None:
        self.keys = {k: str(v) if isinstance(v, Path) else v for k, v in keys.items()}
        self.env = env
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 120.0) -> float:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HUB_CHILD, json.dumps(self.keys)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        assert self.proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        if not ready or not ready[0].startswith("ready"):
            self.kill()
            raise RuntimeError(f"the hub process did not start in {timeout_s:g}s")
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(20)


class CommandObserver:
    """Every OTA command the hub publishes, decoded with the hub's release key: device -> [(action, version)]."""

    def __init__(self, mqtt_url: str, trusted_pem: str) -> None:
        from tandem.protocols.ota import decode_command
        from tandem.protocols.signing import load_public_key
        from tandem.protocols.topics import all_devices, parse_mqtt_url, parse_topic

        key = load_public_key(trusted_pem)
        self.seen: dict[str, list[tuple[str, str]]] = {}
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="faults-observer", protocol=mqtt.MQTTv5)
        self._subscribed = threading.Event()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            cmd = decode_command(msg.payload, key, now=float("-inf"))
            device = parse_topic(msg.topic).device_id or "?"
            self.seen.setdefault(device, []).append((cmd.action, cmd.version))

        self._client.on_connect = lambda c, *a: c.subscribe(all_devices("ota/cmd"), qos=1)
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = on_message
        host, port = parse_mqtt_url(mqtt_url)
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the command observer could not subscribe")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _phase_reached(body: dict[str, Any], phase: str, wave: int) -> bool:
    """`wave` counts from 1, as REST does."""
    states = [d for d in body.get("device_states", []) if d["wave"] == wave]
    if not states:
        return False
    if phase == "sending":
        return body.get("wave") == wave
    if phase == "watching":
        return any(d.get("step") == "watching" for d in states)
    return all(d["state"] == "committed" for d in states)  # between_waves


def seed_fleet(setup: Any, rel: dict[str, Path], n_devices: int) -> tuple[str, str, str, list[str]]:
    """Register both releases, a fleet and an operator token and `n_devices` devices through a hub that then
    lets go of the data dir (the hub processes under test start on it): (device token, operator token,
    trusted publisher pem, device ids)."""
    try:
        for version in ("1.0.0", "1.1.0"):
            setup.registry.register_dir(rel[version])
        device_token = setup.tokens.create("fleet", "read").token
        operator = setup.tokens.create("operator", "operate").token
        trusted_pem = setup.key.public_pem
        ids = [f"dev-{i:02d}" for i in range(n_devices)]
        for dev_id in ids:
            setup.devices.register(dev_id, "cpu-x86", "faults", {"site": "faults"})
    finally:
        setup.stop()
    return device_token, operator, trusted_pem, ids


def start_devices(
    devices: list[Any],
    root: Path,
    rel: dict[str, Path],
    broker_url: str,
    device_token: str,
    trusted_pem: str,
    ids: list[str],
    watch_s: float,
) -> None:
    """Start a SimDevice on 1.0.0 per id, appending each to `devices` as it starts (so the caller's cleanup
    stops every one started), and wait until all subscribe to their command topics."""
    from ota_fixtures import SimDevice

    from tandem.edge_agent.ota.machine import WatchPolicy

    data = np.load(rel["digits"] / "test.npz")
    inputs = data[data.files[0]].astype(np.float32)
    # latency left loose: the box is shared; the watch's own statistics are tests/test_ota_machines.py's
    watch = WatchPolicy(watch_s=watch_s, min_requests=20, max_fallback_rise=0.3, max_latency_ratio=100.0)
    for dev_id in ids:
        devices.append(
            SimDevice(dev_id, root, rel["1.0.0"], broker_url, device_token, trusted_pem, inputs, watch).start()
        )
    if not all(d.client.wait_subscribed(20) for d in devices):
        raise RuntimeError("devices did not subscribe")


def post_rollout(http: httpx.Client) -> str:
    """Roll 1.1.0 out to the seeded fleet in waves 34/67/100 (gates loose on latency: the box is shared);
    the rollout's id."""
    from ota_fixtures import MODEL

    resp = http.post(
        "/v1/rollouts",
        json={
            "model": MODEL,
            "version": "1.1.0",
            "select": {"profile": "cpu-x86", "site": "faults"},
            "waves": [34, 67, 100],
            "gates": {"min_reporting": 1.0, "wave_timeout_s": 120, "max_latency_ratio": 100.0},
        },
    )
    if resp.status_code != 201:
        raise RuntimeError(f"rollout refused: {resp.status_code} {resp.text[:300]}")
    return str(resp.json()["rollout_id"])


def hub_sigkill_mid_rollout(root: Path, args: Any, say: Callable[[str], None], env: dict[str, str]) -> dict[str, Any]:
    from ota_fixtures import Broker

    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    phases = [p for p in args.hub_kills.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ValueError(f"--hub-kills: unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
    rel = prepare_models(Path(args.models_dir), say)
    broker = Broker(root / "mosquitto")
    keys: dict[str, Any] = {
        "data_dir": root / "hub",
        "http.port": _free_port(),
        "grpc.port": _free_port(),
        "mqtt.url": broker.url,
        "publishers.trust_on_first_use": True,
        "telemetry.enabled": False,
        "rollouts.tick_s": 0.2,
        "rollouts.watch_s": args.rollout_watch_s,
    }
    setup = Hub(HubConfig.from_keys(keys))  # registers releases, tokens and devices in the data dir, then lets go
    device_token, operator, trusted_pem, ids = seed_fleet(setup, rel, args.rollout_devices)
    hub = HubProcess(keys, env)
    devices: list[Any] = []
    observer: CommandObserver | None = None
    try:
        hub.start()
        observer = CommandObserver(broker.url, trusted_pem)
        start_devices(devices, root / "devices", rel, broker.url, device_token, trusted_pem, ids, args.rollout_watch_s)
        http_url = f"http://127.0.0.1:{keys['http.port']}"
        http = httpx.Client(base_url=http_url, headers={"Authorization": f"Bearer {operator}"}, timeout=10)
        rid = post_rollout(http)
        kills: list[dict[str, Any]] = []
        body: dict[str, Any] = {}
        deadline = time.monotonic() + args.rollout_timeout_s
        for i, phase in enumerate(phases):
            wave = min(i, 2) if phase != "between_waves" else min(i, 1)
            while time.monotonic() < deadline:
                try:
                    body = http.get(f"/v1/rollouts/{rid}").json()
                except httpx.HTTPError:
                    time.sleep(0.2)
                    continue
                if body.get("status") != "running" or _phase_reached(body, phase, wave + 1):
                    break
                time.sleep(0.05)
            if body.get("status") != "running":
                kills.append({"phase": phase, "skipped": f"rollout already {body.get('status')}"})
                continue
            seen = {
                "wave": body.get("wave"),
                "states": sorted({f"{d['device_id']}:{d['state']}/{d.get('step')}" for d in body["device_states"]}),
            }
            hub.kill()
            say(f"hub SIGKILL {i + 1}/{len(phases)} at {phase} (wave {wave + 1})")
            time.sleep(args.hub_down_rollout_s)
            restart_s = hub.start()
            kills.append({"phase": phase, "aimed_at_wave": wave + 1, **seen, "restart_s": round(restart_s, 2)})
        while time.monotonic() < deadline:
            with _quiet():
                body = http.get(f"/v1/rollouts/{rid}").json()
            if body.get("status") not in ("running", "paused"):
                break
            time.sleep(0.2)
        http.close()
        time.sleep(1.0)  # late commands would land now
        commanded = {d: sorted(set(v)) for d, v in observer.seen.items()}
        other = {d: v for d, v in commanded.items() if v != [("install", "1.1.0")]}
        final = {d.device_id: d.client.store.active_version for d in devices}
        rolled_back = sorted(d["device_id"] for d in body.get("device_states", []) if d["state"] != "committed")
        return {
            "devices": len(devices),
            "kills": kills,
            "status": body.get("status"),
            "reason": body.get("reason", ""),
            "devices_on_new_version": sum(v == "1.1.0" for v in final.values()),
            "devices_not_committed": rolled_back,
            "devices_commanded_into_another_version": other,
            "commands_received": sum(len(v) for v in observer.seen.values()),
            "switches": sum(d.switches for d in devices),
        }
    finally:
        for d in devices:
            d.stop()
        if observer is not None:
            observer.close()
        hub.kill()
        broker.stop()


class _quiet:
    """Retry-friendly: a connection error while the hub restarts reads as 'still running'."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, httpx.HTTPError)

"""Benchmark OTA rollouts on one machine: a real hub (`Hub(...).start()`, its own rollout service),
real Mosquitto and N simulated devices (tests/ota_fixtures.SimDevice: the real OTA client, A/B store
and the digits model served through load_session, one ONNX Runtime session per device).

It measures, in one run:
  all-at-once  a good release sent to every device in one wave (waves 100): the baseline
  staged       a good release through the staged waves (default 10,50,100): time per wave and in all
  bad          releases that must halt at wave 1: 'collapsed' (passes its self-test, answers with
               near-zero confidence, so each device's health watch rolls it back) and 'self-test'
               (golden outputs that do not match); how many devices were sent / switched to it before
               the halt, and that every device ends on the previous version.
The ratio staged / all-at-once is the price of staging (each wave waits for its devices' health watch).

Usage: python bench/ota.py [--json] [--devices 100] [--waves 10,50,100] [--watch-s 1.0] [--bad collapsed,self-test]
Progress goes to stderr; a summary (or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests", ROOT / "examples" / "digits"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import httpx  # noqa: E402

from tandem.cloud_hub.config import HubConfig  # noqa: E402
from tandem.cloud_hub.hub import Hub  # noqa: E402
from tandem.edge_agent.ota.machine import WatchPolicy  # noqa: E402
from ota_fixtures import MODEL, MOSQUITTO, Broker, SimDevice, derive, releases, scramble_golden  # noqa: E402

BAD_KINDS = ("collapsed", "self-test")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def prepare_releases(root: Path) -> dict[str, Path]:
    """digits trained here, 1.0.0 compiled, then the bench's versions derived (each rollout needs a higher one)."""
    import train  # examples/digits/train.py

    digits = root / "digits"
    digits.mkdir()
    train.train(digits)
    base = releases(digits, lambda: root / "compiled")
    out = root / "bench-releases"
    out.mkdir()
    return {
        "digits": digits,
        "1.0.0": base["1.0.0"],
        "2.0.0": derive(base["1.0.0"], out / "2.0.0", "2.0.0"),  # all-at-once (good)
        "2.1.0": derive(base["1.0.0"], out / "2.1.0", "2.1.0"),  # staged (good)
        "2.2.0": derive(base["1.3.0"], out / "2.2.0", "2.2.0"),  # collapsed
        "2.3.0": derive(base["1.0.0"], out / "2.3.0", "2.3.0", scramble_golden),  # fails its self-test
    }


class Fleet:
    def __init__(self, root: Path, rel: dict[str, Path], n: int, watch_s: float) -> None:
        self.broker = Broker(root / "mosquitto")
        self.hub = Hub(
            HubConfig.from_keys(
                {
                    "publishers.trust_on_first_use": True,
                    "data_dir": root / "hub",
                    "http.port": 0,
                    "grpc.port": 0,
                    "mqtt.url": self.broker.url,
                    "rollouts.tick_s": 0.1,
                    "rollouts.watch_s": watch_s,
                }
            )
        ).start()
        self.devices: list[SimDevice] = []
        try:
            for version in ("1.0.0", "2.0.0", "2.1.0", "2.2.0", "2.3.0"):
                self.hub.registry.register_dir(rel[version])
            fleet_token = self.hub.tokens.create("fleet", "read").token
            operator = self.hub.tokens.create("bench", "operate").token
            self.http = httpx.Client(
                base_url=self.hub.http_url, headers={"Authorization": f"Bearer {operator}"}, timeout=30
            )
            if not self.hub.rollouts.wait_subscribed(10):
                raise RuntimeError("the hub's rollout service did not subscribe")
            x = np.load(rel["digits"] / "test.npz")
            inputs = x[x.files[0]].astype(np.float32)
            # latency gates off: N devices on two shared cores make per-device latency ratios noise; fallback rate decides
            watch = WatchPolicy(watch_s=watch_s, min_requests=20, max_fallback_rise=0.3, max_latency_ratio=1e6)
            t0 = time.perf_counter()
            for i in range(n):
                dev_id = f"bench-{i:03d}"
                self.hub.devices.register(dev_id, "cpu-x86", "bench", {"site": "bench"})
                device = SimDevice(
                    dev_id,
                    root / "devices",
                    rel["1.0.0"],
                    self.broker.url,
                    fleet_token,
                    self.hub.key.public_pem,
                    inputs,
                    watch,
                )
                self.devices.append(device.start())
                if (i + 1) % 25 == 0:
                    log(f"{i + 1}/{n} devices up")
            deadline = time.monotonic() + 60
            for d in self.devices:
                if not d.client.wait_subscribed(max(0.1, deadline - time.monotonic())):
                    raise RuntimeError(f"{d.device_id} did not subscribe")
            self.setup_s = time.perf_counter() - t0
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for d in self.devices:
            d.stop()
        if getattr(self, "http", None) is not None:
            self.http.close()
        self.hub.stop()
        self.broker.stop()

    def rollout(self, version: str, waves: list[int], timeout_s: float) -> dict[str, Any]:
        body = {
            "model": MODEL,
            "version": version,
            "select": {"profile": "cpu-x86", "site": "bench"},
            "waves": waves,
            "gates": {"min_reporting": 1.0, "wave_timeout_s": timeout_s, "max_latency_ratio": 1000.0},
        }
        t0 = time.time()
        resp = self.http.post("/v1/rollouts", json=body)
        if resp.status_code != 201:
            raise RuntimeError(f"POST /v1/rollouts: {resp.status_code} {resp.text}")
        rid = resp.json()["rollout_id"]
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            r = self.http.get(f"/v1/rollouts/{rid}", params={"events": 0}).json()
            settled = all(
                d["state"] in ("pending", "committed", "failed", "rejected", "rolled_back") for d in r["device_states"]
            )
            if r["status"] in ("completed", "halted", "aborted", "rolled_back") and settled:
                wall_s = time.time() - t0
                r["events"] = self.hub.rollouts.events(rid, 1_000_000)  # every step, in order (REST pages them)
                return {"rollout": r, "t0": t0, "wall_s": wall_s}
            line = f"{version}: {r['status']} wave {r['wave']}/{len(r['waves'])} {r['counts']}"
            if line != last:
                log(line)
                last = line
            time.sleep(0.1)
        raise RuntimeError(f"rollout {rid} of {version} did not finish in {timeout_s}s: {last}")


def wave_timings(result: dict[str, Any]) -> list[dict[str, Any]]:
    r, t0 = result["rollout"], result["t0"]
    opened_at = [e["at"] for e in r["events"] if e["kind"] == "wave_opened"]
    percents = [e["detail"].get("percent") for e in r["events"] if e["kind"] == "wave_opened"]
    out = []
    for i, at in enumerate(opened_at):
        states = [d for d in r["device_states"] if d["wave"] == i + 1]
        done = max((d["updated_at"] for d in states), default=at)
        out.append(
            {
                "wave": i + 1,
                "percent": percents[i],
                "devices": len(states),
                "committed": sum(d["state"] == "committed" for d in states),
                "opened_s": round(at - t0, 3),
                "settled_s": round(done - t0, 3),
                "duration_s": round(done - at, 3),
            }
        )
    return out


def good_rollout(fleet: Fleet, version: str, waves: list[int], timeout_s: float) -> dict[str, Any]:
    res = fleet.rollout(version, waves, timeout_s)
    r = res["rollout"]
    serving = sorted({d.serving for d in fleet.devices})
    out = {
        "version": version,
        "waves": waves,
        "status": r["status"],
        "counts": r["counts"],
        "total_s": round(res["wall_s"], 3),
        "per_wave": wave_timings(res),
        "devices_serving": serving,
    }
    if r["status"] != "completed" or serving != [version]:
        raise RuntimeError(
            f"good rollout of {version} ended {r['status']} {r['counts']} serving={serving} {r['reason']}"
        )
    log(f"{version} through waves {waves}: {out['total_s']:.1f}s")
    return out


def bad_rollout(
    fleet: Fleet, kind: str, version: str, previous: str, waves: list[int], timeout_s: float
) -> dict[str, Any]:
    before = {d.device_id: d.client.store.state.max_accepted for d in fleet.devices}
    res = fleet.rollout(version, waves, timeout_s)
    r = res["rollout"]
    time.sleep(0.3)  # a rollback's swap finishing on the device side
    sent = [d for d in r["device_states"] if d["state"] != "pending"]
    switched = [
        d.device_id
        for d in fleet.devices
        if d.client.store.state.max_accepted == version and before[d.device_id] != version
    ]
    halt = next((e for e in r["events"] if e["kind"] == "halted"), None)
    ended = sorted({d.serving for d in fleet.devices})
    out = {
        "kind": kind,
        "version": version,
        "status": r["status"],
        "halted_at_wave": r["wave"],
        "reason": r["reason"],
        "devices": len(r["device_states"]),
        "sent_the_command": len(sent),
        "switched_to_it": len(switched),
        "counts": r["counts"],
        "time_to_halt_s": round((halt["at"] - res["t0"]) if halt else res["wall_s"], 3),
        "ended_on": ended,
        "ended_on_previous": ended == [previous]
        and all(d.client.store.active_version == previous for d in fleet.devices),
    }
    log(
        f"bad ({kind}) {version}: {r['status']} at wave {r['wave']}, sent to {len(sent)}, switched {len(switched)}, "
        f"fleet on {ended}"
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--waves", default="10,50,100")
    ap.add_argument("--watch-s", type=float, default=1.0, help="each device's health watch after a switch")
    ap.add_argument(
        "--bad", default=",".join(BAD_KINDS), help=f"bad releases to try, of {', '.join(BAD_KINDS)} ('' for none)"
    )
    ap.add_argument("--timeout-s", type=float, default=600)
    args = ap.parse_args()
    if MOSQUITTO is None:
        print("bench/ota.py needs mosquitto (apt-get install mosquitto)", file=sys.stderr)
        return 2
    waves = [int(w) for w in args.waves.split(",")]
    bad = [k for k in args.bad.split(",") if k]
    if any(k not in BAD_KINDS for k in bad):
        ap.error(f"--bad: choose from {', '.join(BAD_KINDS)}")

    with tempfile.TemporaryDirectory(prefix="tandem-bench-ota-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        rel = prepare_releases(root)
        log(f"releases ready in {time.perf_counter() - t0:.1f}s; starting {args.devices} devices")
        fleet = Fleet(root, rel, args.devices, args.watch_s)
        try:
            log(f"{args.devices} devices up and subscribed in {fleet.setup_s:.1f}s")
            baseline = good_rollout(fleet, "2.0.0", [100], args.timeout_s)
            staged = good_rollout(fleet, "2.1.0", waves, args.timeout_s)
            bads = [
                bad_rollout(
                    fleet, kind, {"collapsed": "2.2.0", "self-test": "2.3.0"}[kind], "2.1.0", waves, args.timeout_s
                )
                for kind in bad
            ]
        finally:
            fleet.stop()

    result = {
        "bench": "ota",
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "devices": args.devices,
        "waves": waves,
        "watch_s": args.watch_s,
        "device_model": "digits edge MLP, one ONNX Runtime session per device (real OTA client + A/B store on disk)",
        "fleet_setup_s": round(fleet.setup_s, 3),
        "all_at_once": baseline,
        "staged": staged,
        "ratio_staged_vs_all_at_once": round(staged["total_s"] / baseline["total_s"], 3),
        "bad": bads,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.devices} devices, watch {args.watch_s}s")
        print(f"  all at once   {baseline['total_s']:7.1f}s")
        print(f"  staged {waves}  {staged['total_s']:7.1f}s  (x{result['ratio_staged_vs_all_at_once']:.2f})")
        for w in staged["per_wave"]:
            print(
                f"    wave {w['wave']} ({w['percent']}%, {w['devices']} devices): opened {w['opened_s']:.1f}s, "
                f"settled {w['settled_s']:.1f}s"
            )
        for b in bads:
            print(
                f"  bad ({b['kind']}): {b['status']} at wave {b['halted_at_wave']} after {b['time_to_halt_s']:.1f}s; "
                f"sent to {b['sent_the_command']}, switched {b['switched_to_it']}; ended on {b['ended_on']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

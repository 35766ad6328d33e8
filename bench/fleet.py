"""Benchmark the simulator: the largest virtual fleet that holds its simulated SLOs on this machine.

Steps the device count up (each step a fresh fleet against one real hub + broker,
mixed cpu-arm / gpu-cuda / npu-litert devices at --rate requests/s each, telemetry
windows of --window seconds) until one of the SLOs breaks:

- answer latency p99 (emulated edge compute + real fallback round trips) <= --p99-ms
- scheduling lag: the 95th percentile over seconds of the latest request's lag <= --lag-s
  (a device's request served late means the host, not the device, is the bottleneck)
- telemetry: after the step, the hub holds every window the devices numbered within --drain-s

The baseline, measured in the same run, is the smallest step; each step reports its
ratios to it. Progress goes to stderr; the result (a table, or JSON with --json) to stdout.

Usage: python bench/fleet.py [--json] [--steps 25,100,250,500,750,1000,1500] [--duration 12]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tandem.sim.environment import Environment  # noqa: E402
from tandem.sim.fleet import Fleet, FleetConfig  # noqa: E402
from tandem.sim.releases import CLOUD_MODEL, prepare  # noqa: E402
from tandem.sim.runner import DEFAULT_PROFILES, changes_for, device_specs  # noqa: E402
from tandem.sim.scenario import DeviceGroup, DriftSettings, Scenario  # noqa: E402
from tandem.sim.streams import Dataset  # noqa: E402


def _scenario(n: int, rate: float, window_s: float, duration: float, prefix: str) -> Scenario:
    per = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
    groups = tuple(DeviceGroup(p, c, rate, tags={"step": prefix}) for p, c in zip(DEFAULT_PROFILES, per) if c)
    return Scenario(name=prefix, description="", duration_s=duration, devices=groups, window_s=window_s)


def run_step(
    env: Environment, models: Any, data: Dataset, n: int, args: argparse.Namespace, root: Path
) -> dict[str, Any]:
    sc = _scenario(n, args.rate, args.window, args.duration, f"n{n}")
    specs = device_specs(sc)
    from dataclasses import replace

    specs = [replace(s, device_id=f"{sc.name}-{s.device_id}") for s in specs]
    for s in specs:
        env.hub.devices.register(s.device_id, s.profile.name, "bench", s.tags)
    config = FleetConfig(workers=args.workers, window_s=args.window, hub_model=CLOUD_MODEL)
    before = env.telemetry.store.count_windows()
    t_setup = time.perf_counter()
    fleet = Fleet(
        specs,
        data=data,
        changes=changes_for(sc),
        hub_grpc=env.grpc_url,
        mqtt_url=env.mqtt_url,
        workdir=root / sc.name,
        config=config,
    )
    try:
        fleet.start(models.edge)
        fleet.wait_connected(30)
        setup_s = time.perf_counter() - t_setup
        cpu0 = os.times()
        fleet.run_for(args.duration)
        cpu1 = os.times()
        t_drain = time.perf_counter()
        sent = fleet.sent_windows()
        deadline = time.monotonic() + args.drain_s
        while env.telemetry.store.count_windows() - before < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        drain_s = time.perf_counter() - t_drain
        stored = env.telemetry.store.count_windows() - before
        rows = [r for r in fleet.recorder.rows() if r["t"] < args.duration - 1]
        total = fleet.recorder.summary()
        lag_p95 = float(np.percentile([r["max_lag_s"] for r in rows], 95)) if rows else None
        expected = n * args.rate * args.duration
        out = {
            "devices": n,
            "requests": total["requests"],
            "requests_per_s": round(total["requests"] / args.duration, 1),
            "served_share": round(total["requests"] / expected, 3) if expected else None,
            "latency_p50_ms": _r(total["latency_p50_ms"]),
            "latency_p99_ms": _r(total["latency_p99_ms"]),
            "fallback_rate": round(total["fallback_rate"], 4),
            "lag_p95_s": _r(lag_p95),
            "windows_sent": sent,
            "windows_stored": stored,
            "drain_s": round(drain_s, 2),
            "setup_s": round(setup_s, 2),
            "cpu_s_per_s": round(((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / args.duration, 2),
            "sessions": len(fleet.pool.sessions()),
        }
        out["slo"] = {
            "p99": out["latency_p99_ms"] is not None and out["latency_p99_ms"] <= args.p99_ms,
            "lag": lag_p95 is not None and lag_p95 <= args.lag_s,
            "telemetry": stored == sent,
        }
        out["holds"] = all(out["slo"].values())
        return out
    finally:
        fleet.close()
        shutil.rmtree(root / sc.name, ignore_errors=True)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--steps", default="25,100,250,500,750,1000,1500", help="device counts to try, in order")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of traffic per step")
    parser.add_argument("--rate", type=float, default=1.0, help="requests per second per device")
    parser.add_argument("--window", type=float, default=5.0, help="telemetry window seconds")
    parser.add_argument("--workers", type=int, default=4, help="fleet worker threads")
    parser.add_argument("--p99-ms", type=float, default=50.0, help="SLO: answer latency p99 (cpu-arm's latency_slo_ms)")
    parser.add_argument("--lag-s", type=float, default=0.25, help="SLO: scheduling lag p95")
    parser.add_argument("--drain-s", type=float, default=15.0, help="SLO: seconds for the hub to hold every window")
    parser.add_argument("--keep-going", action="store_true", help="run every step even after one breaks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]

    root = Path(tempfile.mkdtemp(prefix="tandem-bench-fleet-"))
    try:
        print("preparing models (train + compile)", file=sys.stderr)
        models = prepare(root / "models", DEFAULT_PROFILES)
        data = Dataset.load(models.data_dir / "test.npz")
        env = Environment(root / "env", models, DriftSettings(eval_interval_s=5.0), window_s=args.window).start()
        results = []
        try:
            for n in steps:
                print(f"step: {n} devices for {args.duration:g}s", file=sys.stderr)
                r = run_step(env, models, data, n, args, root)
                results.append(r)
                print(
                    f"  -> p99 {r['latency_p99_ms']} ms, lag p95 {r['lag_p95_s']} s, windows {r['windows_stored']}/"
                    f"{r['windows_sent']}, cpu {r['cpu_s_per_s']} s/s, holds={r['holds']}",
                    file=sys.stderr,
                )
                if not r["holds"] and not args.keep_going:
                    break
        finally:
            env.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = results[0]
    for r in results:
        r["ratio_vs_baseline"] = {
            "latency_p99": _ratio(r["latency_p99_ms"], base["latency_p99_ms"]),
            "lag_p95": _ratio(r["lag_p95_s"], base["lag_p95_s"]),
            "cpu_per_device": _ratio(r["cpu_s_per_s"] / r["devices"], base["cpu_s_per_s"] / base["devices"]),
        }
    holding = [r["devices"] for r in results if r["holds"]]
    report = {
        "bench": "fleet",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "settings": {
            "rate_per_device": args.rate,
            "window_s": args.window,
            "duration_s": args.duration,
            "workers": args.workers,
            "slo": {"p99_ms": args.p99_ms, "lag_p95_s": args.lag_s, "drain_s": args.drain_s},
        },
        "baseline": {"devices": base["devices"]},
        "largest_fleet_holding_slo": max(holding) if holding else 0,
        "steps": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{'devices':>8} {'req/s':>8} {'p99 ms':>8} {'lag p95':>8} {'windows':>13} {'cpu s/s':>8}  holds")
        for r in results:
            print(
                f"{r['devices']:8d} {r['requests_per_s']:8.1f} {r['latency_p99_ms'] or 0:8.2f} {r['lag_p95_s'] or 0:8.3f} "
                f"{r['windows_stored']:6d}/{r['windows_sent']:<6d} {r['cpu_s_per_s']:8.2f}  {r['holds']}"
            )
        print(f"largest fleet holding its SLOs: {report['largest_fleet_holding_slo']} devices")
    return 0


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 2)


if __name__ == "__main__":
    sys.exit(main())

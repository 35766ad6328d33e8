"""The hub under Triton's own load generator: perf_analyzer (tritonclient wheel) drives a real hub's
ModelInfer over gRPC at a few concurrency levels and reports throughput and latency percentiles from
its own clock. The baseline, measured in the same run, is the same ONNX model called directly in
ONNX Runtime (one thread, one row per call): what the hub's gRPC, decoding and batching add.

    python bench/perf_analyzer.py --json [--concurrency 1:4:3] [--window-ms 2000] [--stability-pct 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, add_paths, log

add_paths(ROOT / "tests")

import perf_analyzer_tool  # noqa: E402
from agent_fixtures import make_linear_softmax, make_model_dir  # noqa: E402
from tandem.cloud_hub.config import HubConfig  # noqa: E402
from tandem.cloud_hub.hub import Hub  # noqa: E402

MODEL = "lin"


def direct_baseline(model_file: Path, seconds: float) -> dict[str, float]:
    """ONNX Runtime called in-process, one [1, 64] row at a time: calls per second and latency percentiles."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=100)
    return {"infer_per_s": len(times) / sum(times), "p50_us": q[49] * 1e6, "p99_us": q[98] * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--concurrency", default="1:4:3", help="perf_analyzer's --concurrency-range (start:end:step)")
    parser.add_argument("--window-ms", type=int, default=2000, help="perf_analyzer's measurement window")
    parser.add_argument("--stability-pct", type=int, default=50, help="perf_analyzer's -s (raise on a loaded host)")
    parser.add_argument("--max-trials", type=int, default=10, help="perf_analyzer's -r: windows tried per level")
    args = parser.parse_args(argv)

    tool = perf_analyzer_tool.locate()
    if isinstance(tool, str):
        print(f"perf_analyzer cannot run here: {tool}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tandem-pa-") as tmp:
        root = Path(tmp)
        model_file = make_linear_softmax(root / "lin.onnx", n_in=64, n_out=10)
        log("baseline: ONNX Runtime direct")
        baseline = direct_baseline(model_file, seconds=args.window_ms / 1000 * 2)
        config = HubConfig.from_keys(
            {
                "data_dir": root / "hub",
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.url": "mqtt://127.0.0.1:1",
                "telemetry.enabled": False,
                "rollouts.enabled": False,
                "models.dirs": (make_model_dir(model_file, root / "lin", name=MODEL, version="1.0.0"),),
            }
        )
        with Hub(config).start() as hub:
            log(f"perf_analyzer against the hub at {hub.urls()['grpc']}, concurrency {args.concurrency}")
            levels = perf_analyzer_tool.run(
                tool,
                hub.urls()["grpc"],
                MODEL,
                "x:64",
                root / "pa.csv",
                concurrency=args.concurrency,
                window_ms=args.window_ms,
                stability_pct=args.stability_pct,
                max_trials=args.max_trials,
                timeout_s=600,
            )
    rows = [
        {
            "concurrency": m.concurrency,
            "infer_per_s": round(m.infer_per_s, 1),
            "p50_us": m.p50_us,
            "p90_us": m.p90_us,
            "p99_us": m.p99_us,
            "server_queue_us": m.server_queue_us,
            "throughput_vs_direct": round(m.infer_per_s / baseline["infer_per_s"], 4),
            "p50_vs_direct": round(m.p50_us / baseline["p50_us"], 2),
        }
        for m in levels
    ]
    result = {
        "model": "linear-softmax [N, 64] -> [N, 10], FP32",
        "baseline_direct_ort": {k: round(v, 1) for k, v in baseline.items()},
        "hub_perf_analyzer_grpc": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"direct ORT: {baseline['infer_per_s']:.0f}/s p50 {baseline['p50_us']:.0f} us")
        for r in rows:
            print(
                f"hub c={r['concurrency']}: {r['infer_per_s']:.0f}/s p50 {r['p50_us']} us p99 {r['p99_us']} us "
                f"({r['throughput_vs_direct']:.3f}x direct throughput)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark per-variant confidence calibration: does each quantized variant, with its own
temperature and threshold, fall back as often as FP32 does with the shared threshold?

Compiles the digits edge model (every variant for cpu-x86 and cpu-arm) with the
default goal (match-reference: FP32's fallback rate at --reference-threshold) and, in
the same run, scores every variant on the digits *test* split, which neither the
compile nor the fit saw, twice through the agent's own ConfidencePolicy: with the
shared FP32 threshold, and with the variant's calibrated temperature and threshold.
The baseline is the FP32 reference variant at the shared threshold. The hybrid
accuracy (edge when confident, the digits cloud model otherwise) of both is reported too.

Two scenarios: "default" (the compiler's defaults: up to 256 calibration samples),
where the digits INT8 variants barely move confidence, and "starved-calibration"
(INT8 activation ranges from --starved-samples calibration samples, 2 by default),
a real INT8 build whose confidence drops by several points, as in the reported case.

Usage: python bench/calibration.py [--json] [--digits-dir DIR] [--reference-threshold 0.8]
                                   [--starved-samples 2] [--no-cloud]
Progress goes to stderr; the result (a table, or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "examples" / "digits"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from tandem.edge_agent.policy import ConfidencePolicy  # noqa: E402
from tandem.hardware_profiles.runtimes import load_session  # noqa: E402
from tandem.model_compiler.pipeline import CompileOptions, compile_model  # noqa: E402
from tandem.model_compiler.validate import run_dataset  # noqa: E402
from tandem.protocols.manifest import load_manifest  # noqa: E402

TOLERANCE_POINTS = 2.0  # the issue's bar: within 2 points of FP32's fallback rate


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _outputs(runtime: str, path: Path, options: dict[str, Any], x: np.ndarray) -> np.ndarray:
    session = load_session(runtime, path, **options)
    try:
        return run_dataset(session, {"input": x})[0]
    finally:
        session.close()


def _score(policy: ConfidencePolicy, out: np.ndarray, y: np.ndarray, cloud_pred: np.ndarray | None) -> dict[str, Any]:
    s = policy.score_array(out)
    fallback = ~s.confident
    row: dict[str, Any] = {
        "fallback_rate": round(float(fallback.mean()), 4),
        "edge_accuracy": round(float((s.labels == y).mean()), 4),
    }
    if cloud_pred is not None:
        hybrid = np.where(fallback, cloud_pred == y, s.labels == y)
        row["hybrid_accuracy"] = round(float(hybrid.mean()), 4)
    return row


def run(
    digits_dir: Path,
    work: Path,
    reference_threshold: float,
    cloud: bool,
    calib_samples: int = 256,
    name: str = "default",
) -> dict[str, Any]:
    out = work / f"digits-edge-{name}"
    log(
        f"[{name}] compiling digits edge for cpu-x86, cpu-arm (goal: match-reference, {calib_samples} calibration "
        "samples at most)"
    )
    compile_model(
        CompileOptions(
            model=digits_dir / "edge.onnx",
            profiles=["cpu-x86", "cpu-arm"],
            calib=digits_dir / "calib.npz",
            val=digits_dir / "val.npz",
            out=out,
            signing_key=work / "key.pem",
            timing=False,
            reference_threshold=reference_threshold,
            calib_samples=calib_samples,
            max_accuracy_drop=100.0,
        ),
        progress=lambda m: None,
    )
    manifest = load_manifest(out)
    test = np.load(digits_dir / "test.npz")
    x, y = test["x"].astype(np.float32), test["y"]
    cloud_pred = _outputs("onnxruntime", digits_dir / "cloud.onnx", {}, x).argmax(axis=1) if cloud else None
    shared = ConfidencePolicy("max_prob", reference_threshold)
    baseline_id = "onnxruntime-fp32"
    rows: dict[str, dict[str, Any]] = {}
    for v in manifest.variants:
        raw = _outputs(v.runtime, out / v.model_file.path, v.options.get("session", {}), x)
        cal = v.calibration
        assert cal is not None, v.id
        own = ConfidencePolicy("max_prob", cal.threshold, temperature=cal.temperature)
        rows[v.id] = {
            "precision": v.precision,
            "runtime": v.runtime,
            "temperature": cal.temperature,
            "threshold": cal.threshold,
            "mean_confidence": round(float(raw.max(axis=1).mean()), 5),
            "shared_threshold": _score(shared, raw, y, cloud_pred),
            "own_threshold": _score(own, raw, y, cloud_pred),
            "expected_fallback_rate_at_compile": cal.expected_fallback_rate,
        }
        log(
            f"[{name}] {v.id}: T={cal.temperature:.3f} t={cal.threshold:.4f} fallback shared "
            f"{rows[v.id]['shared_threshold']['fallback_rate']:.4f} own {rows[v.id]['own_threshold']['fallback_rate']:.4f}"
        )
    base_rate = rows[baseline_id]["shared_threshold"]["fallback_rate"]
    for r in rows.values():
        for key in ("shared_threshold", "own_threshold"):
            diff = (r[key]["fallback_rate"] - base_rate) * 100.0
            r[key]["points_from_fp32"] = round(diff, 2)
            r[key]["within_2_points"] = abs(diff) <= TOLERANCE_POINTS
    int8 = {k: r for k, r in rows.items() if r["precision"] == "int8"}
    shifts = [r["mean_confidence"] - rows[baseline_id]["mean_confidence"] for r in int8.values()]
    summary = {
        "calib_samples": calib_samples,
        "baseline": f"{baseline_id} at the shared threshold {reference_threshold:g}",
        "baseline_fallback_rate": base_rate,
        "test_samples": int(len(y)),
        "int8_own_threshold_all_within_2_points": all(r["own_threshold"]["within_2_points"] for r in int8.values()),
        "int8_shared_threshold_all_within_2_points": all(
            r["shared_threshold"]["within_2_points"] for r in int8.values()
        ),
        "int8_max_abs_points_shared": max(abs(r["shared_threshold"]["points_from_fp32"]) for r in int8.values()),
        "int8_max_abs_points_own": max(abs(r["own_threshold"]["points_from_fp32"]) for r in int8.values()),
        "int8_mean_confidence_shift_vs_fp32": [round(float(min(shifts)), 5), round(float(max(shifts)), 5)],
    }
    if summary["int8_shared_threshold_all_within_2_points"]:
        summary["note"] = (
            "the INT8 variants shift confidence too little here for the shared FP32 threshold to "
            "misfire by 2 points; their own thresholds stay within 2 points as well, but this "
            "scenario does not show the shared threshold failing"
        )
    if cloud_pred is not None:
        summary["cloud_accuracy"] = round(float((cloud_pred == y).mean()), 4)
    return {
        "scenario": name,
        "model": "digits-edge",
        "reference_threshold": reference_threshold,
        "summary": summary,
        "variants": rows,
    }


def _table(result: dict[str, Any]) -> str:
    lines = [
        f"scenario {result['scenario']} ({result['summary']['calib_samples']} calibration samples at most)",
        f"baseline: {result['summary']['baseline']} -> fallback {result['summary']['baseline_fallback_rate']:.4f}",
        f"{'variant':28} {'T':>6} {'thr':>7} {'fb shared':>10} {'pts':>6} {'fb own':>8} {'pts':>6}",
    ]
    for vid, r in result["variants"].items():
        s, o = r["shared_threshold"], r["own_threshold"]
        lines.append(
            f"{vid:28} {r['temperature']:6.3f} {r['threshold']:7.4f} {s['fallback_rate']:10.4f} "
            f"{s['points_from_fp32']:6.2f} {o['fallback_rate']:8.4f} {o['points_from_fp32']:6.2f}"
        )
    if "note" in result["summary"]:
        lines.append("note: " + result["summary"]["note"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--digits-dir", type=Path, help="output of examples/digits/train.py (default: train into a temp dir)"
    )
    parser.add_argument(
        "--reference-threshold", type=float, default=0.8, help="the shared FP32 threshold (default: 0.8)"
    )
    parser.add_argument(
        "--starved-samples",
        type=int,
        default=2,
        help="calibration samples for the starved-calibration scenario, 0 to skip it (default: 2)",
    )
    parser.add_argument("--no-cloud", action="store_true", help="skip hybrid accuracy with the digits cloud model")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tandem-bench-calibration-") as tmp:
        work = Path(tmp)
        digits_dir = args.digits_dir
        if digits_dir is None:
            import train

            log("training the digits models")
            digits_dir = work / "digits"
            train.train(digits_dir)
        results = [run(digits_dir, work, args.reference_threshold, cloud=not args.no_cloud)]
        if args.starved_samples > 0:
            results.append(
                run(
                    digits_dir,
                    work,
                    args.reference_threshold,
                    cloud=not args.no_cloud,
                    calib_samples=args.starved_samples,
                    name="starved-calibration",
                )
            )
    if args.json:
        print(json.dumps({"scenarios": results}, indent=2))
    else:
        print("\n\n".join(_table(r) for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

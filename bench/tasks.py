"""The task gate on real models: what each variant keeps of its task, against FP32, beside
the old element-wise agreement that decided before (and missed what the task lost).

Models: PP-OCRv4 rec (CTC) and det (dense map) from rapidocr-onnxruntime, and the
hand-built single-sigmoid classifier and YOLO-layout detector of examples/tasks/models.py.
Per model: every variant's task metric, gate verdict and element agreement; the chosen
variant per profile and its margin to the budget; and a deliberately broken ONNX Runtime
INT8 variant (starved calibration: four constant inputs) validated by the same gate.

Usage: python bench/tasks.py [--json] [--quick] [--models ocr-rec,ocr-det,sigmoid,yolo]
                             [--profiles cpu-x86,npu-intel]
Progress goes to stderr; the result (a table, or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests), not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, add_paths, import_path as _import_path, log  # noqa: E402

add_paths()

from tandem.hardware_profiles import resolve_profiles  # noqa: E402
from tandem.hardware_profiles.runtimes import load_session  # noqa: E402
from tandem.model_compiler import model_io  # noqa: E402
from tandem.model_compiler.data import load_dataset  # noqa: E402
from tandem.model_compiler.pipeline import CompileOptions, compile_model  # noqa: E402
from tandem.model_compiler.validate import Task, run_dataset, validate_variant  # noqa: E402
from tandem.model_compiler.variants import BuildContext, get_builder  # noqa: E402
from tandem.tasks import TaskSpec  # noqa: E402

MODELS = ("ocr-rec", "ocr-det", "sigmoid", "yolo")


def _rapidocr(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise SystemExit("rapidocr-onnxruntime is not installed (make dev installs it)")
    return Path(spec.origin).parent / "models" / name


def prepare(name: str, work: Path, quick: bool) -> tuple[Path, Path, Path]:
    """(model, calibration .npz, validation .npz) for one bench model."""
    n_cal, n_val = (16, 32) if quick else (32, 96)
    if name.startswith("ocr-"):
        data = _import_path("tandem_ocr_data", ROOT / "examples" / "ocr" / "make_data.py")
        if name == "ocr-rec":
            x, model = data.make_rec_data(n_cal + n_val, seed=11), _rapidocr("ch_PP-OCRv4_rec_infer.onnx")
        else:
            x, model = data.make_det_data((n_cal + n_val) // 2, seed=12), _rapidocr("ch_PP-OCRv4_det_infer.onnx")
            n_cal //= 2
        np.savez(work / f"{name}_calib.npz", x=x[:n_cal])
        np.savez(work / f"{name}_val.npz", x=x[n_cal:])
        return model, work / f"{name}_calib.npz", work / f"{name}_val.npz"
    models = _import_path("tandem_task_models", ROOT / "examples" / "tasks" / "models.py")
    models.write_all(work)
    return work / f"{name}.onnx", work / f"{name}_calib.npz", work / f"{name}_val.npz"


def broken_int8(
    model: Path, calib: Path, val: Path, spec: TaskSpec, budgets: dict[str, float], work: Path, profile: str
) -> dict[str, Any]:
    """An ONNX Runtime INT8 built from four constant calibration inputs, judged by the same gate."""
    prepared_path = work / "prepared.onnx"
    prepared, _ = model_io.prepare_model(model_io.load_model(model), prepared_path)
    inputs, outputs = model_io.io_specs(prepared)
    val_data = load_dataset(val, inputs, "validation")
    x = np.load(calib)["x"]
    starved = {inputs[0].name: np.full_like(x[:4], float(np.median(x)))}
    session = load_session("onnxruntime", prepared_path, graph_optimization=False)
    reference = run_dataset(session, val_data.inputs)
    session.close()
    builder = get_builder("onnxruntime")
    recipe = next(r for r in builder.recipes(resolve_profiles([profile])[0]) if r.precision == "int8")
    built = builder.build(recipe, BuildContext(model_path=prepared_path, calib=starved, out_dir=work / "broken"))
    index = [o.name for o in outputs].index(spec.output) if spec.output else 0
    metrics, _ = validate_variant(
        "onnxruntime", built.files, built.session_options, Task(spec, index, budgets), reference, val_data, timing=False
    )
    return {"variant": recipe.id + " (starved calibration)", **_row(metrics)}


def _row(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_metric": m.get("task_metric"),
        "task_value": _r(m.get("task_value")),
        "task_budget": m.get("task_budget"),
        "gate": m.get("task_gate"),
        "margin": _r(m.get("task_margin")),
        "dense_agreement": _r(m.get("agreement")),
        "max_abs_error": _r(m.get("max_abs_error")),
        "latency_p50_ms": _r(m.get("latency_p50_ms")),
    }


def _r(v: Any) -> Any:
    return round(float(v), 4) if isinstance(v, (int, float)) else v


def bench_model(name: str, profiles: list[str], work: Path, quick: bool) -> dict[str, Any]:
    model, calib, val = prepare(name, work, quick)
    log(f"{name}: compiling {model.name} for {', '.join(profiles)}")
    t0 = time.perf_counter()
    opts = CompileOptions(
        model=model,
        profiles=profiles,
        calib=calib,
        val=val,
        out=work / f"{name}-out",
        signing_key=work / "key.pem",
        timing=not quick,
        timing_seconds=0.3,
        force=True,
    )
    result = compile_model(opts, progress=lambda m: log(f"  {m}"))
    spec = TaskSpec.from_dict(result.manifest.task)
    budgets = result.manifest.source["reference"].get("task_budgets", {})
    variants = [{"variant": o.recipe.id, **_row(o.metrics)} for o in result.outcomes if o.built and not o.skipped]
    chosen = {}
    for profile, choice in result.manifest.profiles.items():
        metrics = next((o.metrics for o in result.outcomes if o.recipe.id == choice.chosen), {})
        chosen[profile] = {
            "chosen": choice.chosen,
            "margin": _r(metrics.get("task_margin")),
            "rejected": {s["variant"]: s["reason"] for s in choice.skipped},
        }
    log(f"{name}: building a broken INT8 (starved calibration)")
    broken = broken_int8(model, calib, val, spec, budgets, work, profiles[0])
    missed = [v["variant"] for v in variants + [broken] if v["gate"] == "fail" and (v["dense_agreement"] or 0) >= 0.99]
    return {
        "model": name,
        "file": model.name,
        "task": result.manifest.task,
        "task_reason": result.manifest.source["reference"].get("task_reason"),
        "budgets": budgets,
        "variants": variants,
        "profiles": chosen,
        "broken": broken,
        "broken_rejected": broken["gate"] == "fail",
        "dense_agreement_would_have_passed": missed,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer samples, no host timing")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--profiles", default="cpu-x86,npu-intel")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    profiles = [p for p in args.profiles.split(",") if p]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-tasks-") as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            rows.append(bench_model(name, profiles, work, args.quick))
    result = {
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine()},
        "quick": args.quick,
        "profiles": profiles,
        "models": rows,
        "all_broken_rejected": all(r["broken_rejected"] for r in rows),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for r in rows:
        print(f"\n{r['model']} ({r['file']}): task {r['task']['kind']}, budgets {r['budgets']}")
        print(f"  {'variant':44} {'task metric':>24} {'gate':>5} {'dense agr.':>10}")
        for v in r["variants"] + [r["broken"]]:
            print(
                f"  {v['variant']:44} {str(v['task_metric']) + ' ' + str(v['task_value']):>24} {v['gate']:>5} "
                f"{v['dense_agreement']:>10}"
            )
        for profile, c in r["profiles"].items():
            print(f"  profile {profile}: {c['chosen']} (margin {c['margin']})")
    print(f"\nall broken variants rejected: {result['all_broken_rejected']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

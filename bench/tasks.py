"""The task gate on real models: what each variant keeps of its task, against FP32, beside
the old element-wise agreement that decided before (and missed what the task lost).

Models:
- from PyPI wheels: PP-OCRv4 rec (CTC) and det (dense map) from rapidocr-onnxruntime (installed
  by the dev extra); nudenet 3.4.2's YOLOv8 detector (`nudenet`, [N, 22, 2100]), Silero VAD 6.2.3
  (`silero-vad`: stateful, a single sigmoid, every weight inside `If` branches: compiled with
  `--bind sr=16000`, see BIND) and g2p-id-py
  0.4.2's character BERT (`g2p-bert`: int64 token ids in). These three are fetched once with
  `pip download --no-deps` into $TANDEM_WHEEL_CACHE (~/.cache/tandem-bench/wheels; bench/_wheels.py)
  because they do not install cleanly (torch, a pinned nltk, opencv-python-headless beside
  opencv-python); their inputs come from examples/tasks/wheel_data.py.
- built with onnx.helper (examples/tasks/models.py): a single-sigmoid classifier and a
  YOLO-layout detector.
Per model: every variant's task metric, gate verdict and element agreement; the chosen
variant per profile and its margin to the budget; and a deliberately broken ONNX Runtime
INT8 variant (starved calibration: four constant inputs) validated by the same gate.

Usage: python bench/tasks.py [--json] [--quick] [--models ocr-rec,ocr-det,sigmoid,yolo,nudenet,silero-vad,g2p-bert]
                             [--profiles cpu-x86,npu-intel,npu-litert]
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
from _wheels import WheelModel, WheelUnavailable, model_file, wheel_text  # noqa: E402

add_paths()

from tandem.hardware_profiles import resolve_profiles  # noqa: E402
from tandem.hardware_profiles.runtimes import load_session  # noqa: E402
from tandem.model_compiler import model_io  # noqa: E402
from tandem.model_compiler.data import load_dataset, take  # noqa: E402
from tandem.model_compiler.errors import VariantSkipped  # noqa: E402
from tandem.model_compiler.pipeline import CompileOptions, compile_model  # noqa: E402
from tandem.model_compiler.quiet import silence_third_party_progress  # noqa: E402
from tandem.model_compiler.specialize import bind_inputs  # noqa: E402
from tandem.model_compiler.validate import Task, run_dataset, validate_variant  # noqa: E402
from tandem.model_compiler.variants import BuildContext, get_builder  # noqa: E402
from tandem.tasks import TaskSpec  # noqa: E402

WHEELS = {
    "nudenet": WheelModel("nudenet", "3.4.2", "nudenet/320n.onnx", "YOLOv8n detector, output [N, 22, 2100]"),
    "silero-vad": WheelModel(
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad.onnx",
        "stateful streaming VAD: audio [N, 576], state [2, N, 128], 0-d sr; speech probability [N, 1]",
    ),
    "g2p-bert": WheelModel(
        "g2p-id-py", "0.4.2", "g2p_id/models/bert/bert_mlm.onnx", "character BERT: int64 ids [N, 32] -> [N, 32, 32]"
    ),
}
MODELS = ("ocr-rec", "ocr-det", "sigmoid", "yolo", *WHEELS)
# Scalar inputs fixed at compile time (tandem-compile --bind): Silero keeps its whole network inside
# If(sr == 16000); bound, the weights reach the main graph and OpenVINO/INT8 variants can be built.
BIND = {"silero-vad": {"sr": "16000"}}


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
    if name in WHEELS:
        return _prepare_wheel(name, work, quick)
    models = _import_path("tandem_task_models", ROOT / "examples" / "tasks" / "models.py")
    models.write_all(work)
    return work / f"{name}.onnx", work / f"{name}_calib.npz", work / f"{name}_val.npz"


def _prepare_wheel(name: str, work: Path, quick: bool) -> tuple[Path, Path, Path]:
    """A wheel's model and inputs made from installed packages (examples/tasks/wheel_data.py)."""
    data = _import_path("tandem_wheel_data", ROOT / "examples" / "tasks" / "wheel_data.py")
    model = model_file(WHEELS[name])
    calib, val = work / f"{name}_calib.npz", work / f"{name}_val.npz"
    if name == "nudenet":
        n_cal, n_val = (12, 24) if quick else (24, 48)
        images = data.nudenet_images(n_cal + n_val, seed=1)
        np.savez(calib, images=images[:n_cal])
        np.savez(val, images=images[n_cal:])
    elif name == "silero-vad":
        n_cal, n_val = (32, 96) if quick else (64, 192)
        np.savez(calib, **data.vad_chunks(model, n_cal, seed=1))
        np.savez(val, **data.vad_chunks(model, n_val, seed=2))
    else:
        n_cal, n_val = (32, 64) if quick else (64, 128)
        token2id = json.loads(wheel_text(WHEELS[name], "g2p_id/models/bert/token2id.json"))
        np.savez(calib, input_1=data.g2p_tokens(token2id, n_cal, seed=1))
        np.savez(val, input_1=data.g2p_tokens(token2id, n_val, seed=2))
    return model, calib, val


def _starved(calib: Path, inputs: list) -> dict[str, np.ndarray]:
    """Four calibration samples, each float input replaced by one constant (its median), integer
    ids by the first sample repeated: ranges far too narrow, as a careless calibration gives."""
    data = load_dataset(calib, inputs, "calibration").head(4)
    starved = {}
    for name, arr in data.inputs.items():
        axis = data.axes.get(name, 0)
        if axis is None:
            starved[name] = arr
        elif arr.dtype.kind == "f":
            starved[name] = np.full_like(arr, float(np.median(arr)))
        else:
            starved[name] = np.repeat(take(arr, axis, 0, 1), arr.shape[axis], axis=axis)
    return starved


def broken_int8(
    model: Path,
    calib: Path,
    val: Path,
    spec: TaskSpec,
    budgets: dict[str, float],
    work: Path,
    bind: dict[str, str] | None = None,
) -> dict[str, Any]:
    """cpu-x86's ONNX Runtime INT8 built from a starved calibration, judged by the same gate."""
    prepared_path = work / "prepared.onnx"
    prepared, _ = model_io.prepare_model(model_io.load_model(model), prepared_path)
    if bind:  # specialized as the compile does (its FP32 equals the model's with the bound values)
        prepared, _ = model_io.prepare_model(bind_inputs(prepared, bind).model, prepared_path)
    inputs, outputs = model_io.io_specs(prepared)
    val_data = load_dataset(val, inputs, "validation")
    starved = _starved(calib, inputs)
    builder = get_builder("onnxruntime")
    recipe = next(r for r in builder.recipes(resolve_profiles(["cpu-x86"])[0]) if r.precision == "int8")
    label = recipe.id + " (starved calibration)"
    try:
        built = builder.build(recipe, BuildContext(model_path=prepared_path, calib=starved, out_dir=work / "broken"))
    except VariantSkipped as exc:
        return {"variant": label, "gate": "not built", "reason": str(exc)}
    session = load_session("onnxruntime", prepared_path, graph_optimization=False)
    reference = run_dataset(session, val_data.inputs, val_data.axes)
    session.close()
    index = [o.name for o in outputs].index(spec.output) if spec.output else 0
    metrics, _ = validate_variant(
        "onnxruntime", built.files, built.session_options, Task(spec, index, budgets), reference, val_data, timing=False
    )
    return {"variant": label, **_row(metrics)}


def stream_check(model: Path, out: Path, manifest: Any, seconds: float = 8.0) -> dict[str, dict[str, Any]]:
    """Silero VAD per variant, run hop by hop over one synthetic stream (examples/tasks/wheel_data.py)
    carrying its own state, as an agent's stream does, against the published model with sr=16000
    carrying FP32's: the share of hops whose speech decision (p > 0.5) agrees, and the largest gap.
    The task gate judges windows each given FP32's state, so it cannot see a state that drifts."""
    from tandem.edge_agent.model import open_variant

    data = _import_path("tandem_wheel_data", ROOT / "examples" / "tasks" / "wheel_data.py")
    audio = data.syllable_stream(np.random.default_rng(7), seconds)
    hop, context = data.VAD_CHUNK, data.VAD_CONTEXT
    padded = np.concatenate([np.zeros(context, np.float32), audio])
    windows = [padded[s : s + context + hop][None] for s in range(0, len(audio) - hop + 1, hop)]
    sr = {b.name: np.asarray(b.value, dtype=b.dtype) for b in manifest.bound_inputs}

    def run(session: Any, extra: dict[str, np.ndarray]) -> np.ndarray:
        state, probs = np.zeros((2, 1, 128), np.float32), []
        for window in windows:
            p, state = session.run({"input": window, "state": state, **extra})[:2]
            probs.append(float(np.asarray(p).reshape(-1)[0]))
        return np.array(probs)

    reference = run(load_session("onnxruntime", model, graph_optimization=False), sr)
    found = {}
    for variant in manifest.variants:
        session = open_variant(out, variant, dict(variant.options.get("session", {})), manifest.task)
        try:
            got = run(session, {})
        finally:
            session.close()
        found[variant.id] = {
            "hops": len(windows),
            "decision_agreement": _r(float(np.mean((got > 0.5) == (reference > 0.5)))),
            "max_abs_error": _r(float(np.abs(got - reference).max())),
        }
    return found


def _source(name: str) -> str:
    if name in WHEELS:
        return f"PyPI wheel {WHEELS[name].spec}: {WHEELS[name].member} ({WHEELS[name].why})"
    if name.startswith("ocr-"):
        return "PyPI wheel rapidocr-onnxruntime (dev extra)"
    return "built with onnx.helper (examples/tasks/models.py)"


def _row(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_metric": m.get("task_metric"),
        "task_value": _r(m.get("task_value")),
        "task_budget": m.get("task_budget"),
        "gate": m.get("task_gate"),
        "margin": _r(m.get("task_margin")),
        "dense_agreement": _r(m.get("agreement")),
        "max_abs_error": _r(m.get("max_abs_error")),
        "weight_bytes": m.get("weight_bytes"),
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
        bind=BIND.get(name, {}),
    )
    result = compile_model(opts, progress=lambda m: log(f"  {m}"))
    spec = TaskSpec.from_dict(result.manifest.task)
    budgets = result.manifest.source["reference"].get("task_budgets", {})
    variants = [
        {"variant": o.recipe.id, **_row(o.metrics), "notes": o.built.notes if o.recipe.precision == "int8" else []}
        for o in result.outcomes
        if o.built and not o.skipped
    ]
    not_built = {o.recipe.id: o.skipped for o in result.outcomes if not o.built and o.skipped}
    chosen = {}
    for profile, choice in result.manifest.profiles.items():
        metrics = next((o.metrics for o in result.outcomes if o.recipe.id == choice.chosen), {})
        chosen[profile] = {
            "chosen": choice.chosen,
            "margin": _r(metrics.get("task_margin")),
            "rejected": {s["variant"]: s["reason"] for s in choice.skipped},
        }
    if name == "silero-vad":  # the gate feeds each window FP32's state; a stream feeds a variant its own
        log(f"{name}: streaming every variant with its own state")
        streams = stream_check(model, result.out, result.manifest)
        for v in variants:
            v["stream"] = streams.get(v["variant"])
    log(f"{name}: building a broken INT8 (starved calibration)")
    broken = broken_int8(model, calib, val, spec, budgets, work, BIND.get(name))
    missed = [
        v["variant"] for v in variants + [broken] if v["gate"] == "fail" and (v.get("dense_agreement") or 0) >= 0.99
    ]
    return {
        "model": name,
        "file": model.name,
        "source": _source(name),
        "task": result.manifest.task,
        "bound_inputs": [dict(vars(b)) for b in result.manifest.bound_inputs],
        "task_reason": result.manifest.source["reference"].get("task_reason"),
        "budgets": budgets,
        "reference_weight_bytes": result.manifest.source.get("weight_bytes"),
        "variants": variants,
        "not_built": not_built,
        "profiles": chosen,
        "broken": broken,
        # None: no INT8 could be built at all (the reason is in broken["reason"]), so none to reject
        "broken_rejected": None if broken["gate"] == "not built" else broken["gate"] == "fail",
        "dense_agreement_would_have_passed": missed,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer samples, no host timing")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--profiles", default="cpu-x86,npu-intel,npu-litert")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    profiles = [p for p in args.profiles.split(",") if p]
    if args.json:  # NNCF logs INFO lines through its own stdout handler: they would break the JSON
        silence_third_party_progress()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-tasks-") as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            try:
                rows.append(bench_model(name, profiles, work, args.quick))
            except WheelUnavailable as exc:  # offline: the row says so instead of ending the bench
                log(f"{name}: skipped: {exc}")
                rows.append({"model": name, "source": _source(name), "skipped": str(exc)})
    judged = [r for r in rows if r.get("broken_rejected") is not None]
    result = {
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine()},
        "quick": args.quick,
        "profiles": profiles,
        "models": rows,
        "all_broken_rejected": all(r["broken_rejected"] for r in judged),
        "broken_judged": [r["model"] for r in judged],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for r in rows:
        if "skipped" in r:
            print(f"\n{r['model']}: skipped: {r['skipped']}")
            continue
        print(f"\n{r['model']} ({r['file']}): task {r['task']['kind']}, budgets {r['budgets']}")
        print(f"  {'variant':44} {'task metric':>24} {'gate':>9} {'dense agr.':>10}")
        for v in r["variants"] + [r["broken"]]:
            if v["gate"] == "not built":
                print(f"  {v['variant']:44} not built: {v['reason']}")
                continue
            print(
                f"  {v['variant']:44} {str(v['task_metric']) + ' ' + str(v['task_value']):>24} {v['gate']:>9} "
                f"{v['dense_agreement']:>10}"
            )
        for variant, reason in r["not_built"].items():
            print(f"  {variant:44} not built: {reason}")
        for profile, c in r["profiles"].items():
            print(f"  profile {profile}: {c['chosen']} (margin {c['margin']})")
    print(f"\nall broken variants rejected: {result['all_broken_rejected']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

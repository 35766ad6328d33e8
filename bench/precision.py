"""Precision figures of issue 20: what `tandem-compile` chooses for cpu-x86 and how much faster it is.

For PP-OCRv4 detection (fixed input 1x3x320x320, `--shapes`) and the PP-OCR mobile orientation
classifier (1x3x48x192), both from the rapidocr-onnxruntime wheel, it runs the real compile flow
(profiles cpu-x86 and cpu-arm: ONNX Runtime, OpenVINO f32/bf16/INT8, LiteRT) with its task gates,
adds the OpenVINO f32 IR as Tandem built it before static shapes (dynamic [?,3,?,?]) as the
baseline, then times every variant at batch 1 in interleaved rounds (every variant once per round,
the order rotated) and prints, per model:

- the cpu-x86 choice against OpenVINO f32 FP32 (static and dynamic), target >= 2.5x on detection;
- INT8 against the same runtime's FP32 for ONNX Runtime, OpenVINO and LiteRT, target >= 1.5x;
- file and weight ratios INT8/FP32 (LiteRT target <= 0.3x), and each LiteRT file's bytes by category
  (constant data, quantization scales and zero points, tensor/operator tables, names: litert/footprint.py);
with each ratio as the median and range over the rounds, the gate of every variant, the host's
CPU features and load.

On detection it also builds ONNX Runtime INT8 with this host's integer types three ways, gated
like the compile (mask IoU on the validation set): Conv-only (the default recipe), every chain
quantized (CHAIN_OPTIONS) and the chains less the tensors the sensitivity search leaves float
(SEARCH_OPTIONS), each timed against onnxruntime-fp32 in the same rounds.

The compile's own choice uses the compile's timings (each runtime's default threads, interleaved
rounds too); --threads sets the threads of the sessions this bench times. --profile adds, per
INT8 variant and its FP32, where the time goes by op type: ONNX Runtime's per-node profile
(the median of each node over the runs, summed, so preemption on a loaded host that lands on
random nodes in random runs drops out) and OpenVINO's PERF_COUNT (per node type and kernel).

--cpu-time times one thread per session by the process's CPU time instead of the wall clock:
on a host loaded by other work, waiting for a core is most of a wall-clock figure, and CPU time
leaves it out (measured: ORT det u8s8/FP32 at load ~30 came out 1.05x by CPU time, 1.06x
at load 1.5 by wall clock, and anywhere from 0.7x to 9x by wall clock at load 30).

Usage: python bench/precision.py [--json] [--rounds 3] [--threads N | --cpu-time] [--quick]
                                 [--models ocr-det,ocr-cls] [--keep DIR] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests), not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_paths, log  # noqa: E402

add_paths()

from tandem.hardware_profiles.runtimes import load_session  # noqa: E402
from tandem.model_compiler.host import read_host  # noqa: E402
from tandem.model_compiler.litert.footprint import breakdown  # noqa: E402
from tandem.model_compiler.measure import in_rounds, measure_latency, round_ratios  # noqa: E402
from tandem.model_compiler.pipeline import CompileOptions, compile_model  # noqa: E402
from tandem.model_compiler.variants import BuildContext, get_builder  # noqa: E402
from tandem.protocols.manifest import load_manifest  # noqa: E402
from tandem.tasks import TaskSpec  # noqa: E402
from tandem.tasks.shapes import Bucket, BucketedSession  # noqa: E402

MODELS = ("ocr-det", "ocr-cls")
PROFILES = ("cpu-x86", "cpu-arm")
DET_SIZE = 320
BASELINE = "openvino-fp32-dynamic"  # the f32 IR as Tandem built it before this bench's issue


def _models(names: list[str], work: Path, quick: bool) -> list[dict[str, Any]]:
    """Each model's source, task, --shapes and calibration/validation files."""
    from compile import load_models

    found = {m.name: m for m in load_models(names, work, quick)}
    out = []
    for name in names:
        m = found[name]
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "calib.npz", x=m.calib)
        np.savez(folder / "val.npz", x=m.val, **({"y": m.labels} if m.labels is not None else {}))
        out.append(
            {
                "name": name,
                "source": m.source,
                "folder": folder,
                "val": m.val,
                "task": TaskSpec("dense") if name == "ocr-det" else TaskSpec("classification"),
                "shapes": {"x": [(1, 3, DET_SIZE, DET_SIZE)]} if name == "ocr-det" else {},
            }
        )
    return out


def _compile(model: dict[str, Any], quick: bool) -> Path:
    folder: Path = model["folder"]
    opts = CompileOptions(
        model=model["source"],
        profiles=list(PROFILES),
        calib=folder / "calib.npz",
        val=folder / "val.npz",
        out=folder / "out",
        signing_key=folder / "publisher.pem",
        task=model["task"],
        shapes=model["shapes"],
        timing=True,
        timing_seconds=0.5 if quick else 1.5,
        confidence_calibration=False,
        force=True,
    )
    return compile_model(opts, progress=lambda m: log(f"{model['name']}: {m}")).out


def _baseline(model: dict[str, Any], out: Path) -> Path:
    """The OpenVINO f32 IR without fixed shapes (what Tandem built before), beside the compile's output."""
    builder = get_builder("openvino")
    recipe = next(r for r in builder.recipes(_cpu_x86()) if r.precision == "fp32")
    x = np.load(model["folder"] / "calib.npz")["x"]
    ctx = BuildContext(model_path=model["source"], calib={"x": x}, out_dir=out / "baseline")
    return builder.build(recipe, ctx).files[0]


def _cpu_x86():
    from tandem.hardware_profiles import get_profile

    return get_profile("cpu-x86")


def _session(out: Path, variant, threads: int | None) -> Any:
    """The variant's session as the agent opens it: its session options, one session per shape bucket."""
    options = {**variant.options.get("session", {}), **({"threads": threads} if threads else {})}
    buckets = variant.options.get("buckets")
    if buckets:
        shaped = [Bucket.from_dict(b) for b in buckets]
        sessions = [load_session(variant.runtime, out / b.file, **options) for b in shaped]
        return BucketedSession(sessions, shaped, None, variant.options.get("pad_axes"))
    return load_session(variant.runtime, out / variant.files[0].path, **options)


def _time(
    sessions: dict[str, Any],
    x: np.ndarray,
    rounds: int,
    quick: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """p50 ms per variant per round, every variant once per round, the order rotated each round."""
    kw: dict[str, Any] = dict(warmup=2, runs=8, max_seconds=0.5) if quick else dict(warmup=5, runs=40, max_seconds=3.0)
    kw["clock"] = clock

    def step(session: Any):
        return lambda: measure_latency(session, {session.inputs[0].name: x}, **kw).p50_ms

    return in_rounds({name: step(s) for name, s in sessions.items()}, rounds)


def ratio(slow: list[float], fast: list[float]) -> dict[str, float]:
    """slow/fast per round (how many times faster `fast` is): median and range."""
    return round_ratios(slow, fast).as_dict()


def bench_model(
    model: dict[str, Any],
    rounds: int,
    quick: bool,
    threads: int | None = None,
    profile: bool = False,
    cpu_time: bool = False,
) -> dict[str, Any]:
    out = _compile(model, quick)
    manifest = load_manifest(out)
    variants = {v.id: v for v in manifest.variants}
    sessions = {vid: _session(out, v, threads) for vid, v in variants.items()}
    sessions[BASELINE] = load_session(
        "openvino", _baseline(model, out), inference_precision="f32", **({"threads": threads} if threads else {})
    )
    extra = _ort_recipes(model, out) if model["name"] == "ocr-det" else {}
    for vid, built in extra.items():
        sessions[vid] = load_session("onnxruntime", built["path"], **({"threads": threads} if threads else {}))
    x = np.ascontiguousarray(model["val"][:1])
    log(f"{model['name']}: timing {len(sessions)} variants, {rounds} interleaved rounds")
    samples = _time(sessions, x, rounds, quick, time.process_time if cpu_time else time.perf_counter)
    for s in sessions.values():
        s.close()
    rows = {
        vid: {
            "runtime": v.runtime,
            "precision": v.precision,
            "profiles": v.profiles,
            "p50_ms": round(float(np.median(samples[vid])), 3),
            "gate": v.metrics.get("task_gate"),
            "gate_reason": v.metrics.get("task_reason"),
            "file_bytes": v.metrics.get("file_bytes"),
            "weight_bytes": v.metrics.get("weight_bytes"),
            "session": v.options.get("session", {}),
            "inputs": [s.shape for s in v.inputs],
        }
        for vid, v in variants.items()
    }
    for vid, v in variants.items():  # where a LiteRT file's bytes go (issue 20: INT8 <= 0.3x FP32)
        if v.runtime == "litert":
            rows[vid]["file_breakdown"] = breakdown((out / v.files[0].path).read_bytes())
    rows[BASELINE] = {
        "runtime": "openvino",
        "precision": "fp32",
        "p50_ms": round(float(np.median(samples[BASELINE])), 3),
    }
    result: dict[str, Any] = {"model": model["name"], "input": list(x.shape), "variants": rows, "choices": {}}
    for profile, choice in manifest.profiles.items():
        entry: dict[str, Any] = {"chosen": choice.chosen, "reason": choice.reason, "refused": choice.skipped}
        if choice.chosen and profile == "cpu-x86":
            fp32 = next((vid for vid in variants if vid.startswith("openvino-fp32")), None)
            entry["speedup_vs_openvino_f32_dynamic"] = ratio(samples[BASELINE], samples[choice.chosen])
            if fp32:
                entry[f"speedup_vs_{fp32}"] = ratio(samples[fp32], samples[choice.chosen])
        result["choices"][profile] = entry
    result["int8_vs_fp32"] = _int8_ratios(variants, samples, rows)
    fp32 = next((vid for vid, v in variants.items() if v.runtime == "onnxruntime" and v.precision == "fp32"), None)
    for vid, built in extra.items():
        rows[vid] = {"runtime": "onnxruntime", "precision": "int8", "p50_ms": round(float(np.median(samples[vid])), 3)}
        result["int8_vs_fp32"][vid] = {
            "vs": fp32,
            "speedup": ratio(samples[fp32], samples[vid]) if fp32 else None,
            **{k: v for k, v in built.items() if k != "path"},
        }
    if profile:
        result["profiles"] = _profiles(out, variants, x, threads, 10 if quick else 30)
        for vid, built in extra.items():
            result["profiles"][vid] = _ort_profile(built["path"], x, threads, 10 if quick else 30, {})
    return result


def _ort_recipes(model: dict[str, Any], out: Path) -> dict[str, dict[str, Any]]:
    """ONNX Runtime INT8 recipes beside the compile's, with this host's integer types: Conv-only (the
    default recipe), every chain quantized (CHAIN_OPTIONS) and the chains less what the sensitivity
    search leaves float (SEARCH_OPTIONS); each gated like the compile (mask IoU on the validation
    set against FP32), with its build time and notes."""
    from tandem.model_compiler import model_io
    from tandem.model_compiler.validate import Task, compare_outputs
    from tandem.model_compiler.variants.onnxruntime import CHAIN_OPTIONS, SEARCH_OPTIONS, int8_types
    from tandem.tasks.metrics import budgets_for

    host = read_host()
    types = int8_types(host.isa, sorted(host.cpu_features))
    builder = get_builder("onnxruntime")
    base = next(r for r in builder.recipes(_cpu_x86()) if r.precision == "int8")
    base_options = {**base.options, "activation_type": types.activation, "reduce_range": types.reduce_range}
    folder = out / "extra-ort"
    prepared = folder / "reference-fp32.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    model_io.prepare_model(model_io.load_model(model["source"]), prepared)
    task = Task(model["task"], 0, budgets_for(model["task"]))
    calib = {"x": np.load(model["folder"] / "calib.npz")["x"]}
    val = np.ascontiguousarray(model["val"])
    reference = load_session("onnxruntime", prepared, graph_optimization=False).run({"x": val})
    found = {}
    for name, options in (("conv", {}), ("chains", CHAIN_OPTIONS), ("searched", SEARCH_OPTIONS)):
        recipe = type(base)(f"onnxruntime-int8-{types.tag}-{name}", "onnxruntime", "int8", {**base_options, **options})
        log(f"{model['name']}: building {recipe.id}")
        started = time.perf_counter()
        ctx = BuildContext(model_path=prepared, calib=calib, out_dir=folder, task=task, log=log)
        built = builder.build(recipe, ctx)
        seconds = time.perf_counter() - started
        got = load_session("onnxruntime", built.files[0]).run({"x": val})
        gate = compare_outputs(task, reference, got, None)
        found[recipe.id] = {
            "path": built.files[0],
            "gate": gate["task_gate"],
            "gate_reason": gate["task_reason"],
            "build_seconds": round(seconds, 1),
            "notes": built.notes,
        }
    return found


def _profiles(out: Path, variants: dict, x: np.ndarray, threads: int | None, runs: int) -> dict[str, Any]:
    """Per INT8 variant of ONNX Runtime or OpenVINO and its runtime's FP32: ms by op type."""
    wanted = set()
    for vid, v in variants.items():
        if v.precision == "int8" and v.runtime in ("onnxruntime", "openvino"):
            base = next((f for f, w in variants.items() if w.runtime == v.runtime and w.precision == "fp32"), None)
            wanted |= {vid, base} - {None}
    found: dict[str, Any] = {}
    for vid in sorted(wanted):
        v = variants[vid]
        files = [out / f.path for f in v.files if f.path.endswith((".onnx", ".xml"))]
        opts = v.options.get("session", {})
        found[vid] = (_ort_profile if v.runtime == "onnxruntime" else _ov_profile)(files[0], x, threads, runs, opts)
    return found


def _ort_profile(path: Path, x: np.ndarray, threads: int | None, runs: int, _opts: dict) -> dict[str, Any]:
    """ORT's per-node kernel times: each node's median over `runs`, summed per op type (ms)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_name(f".profile-{path.stem}"))
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x}
    for _ in range(3 + runs):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    per_node: dict[str, list[float]] = {}
    op_of: dict[str, str] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node.setdefault(event["name"], []).append(event["dur"] / 1000.0)
            op_of[event["name"]] = event["args"]["op_name"]
    trace.unlink(missing_ok=True)
    by_op: dict[str, float] = {}
    for node, times in per_node.items():
        by_op[op_of[node]] = by_op.get(op_of[node], 0.0) + float(np.median(times[-runs:]))
    return _summary(by_op)


def _ov_profile(path: Path, x: np.ndarray, threads: int | None, runs: int, opts: dict) -> dict[str, Any]:
    """OpenVINO's PERF_COUNT: each node's median real time over `runs`, summed per node type and per kernel."""
    import openvino as ov

    config: dict[str, Any] = {"PERF_COUNT": "YES"}
    if opts.get("inference_precision"):
        config["INFERENCE_PRECISION_HINT"] = opts["inference_precision"]
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    per_node: dict[str, list[float]] = {}
    kind: dict[str, tuple[str, str]] = {}
    for k in range(3 + runs):
        request.infer({0: x})
        if k < 3:
            continue
        for p in request.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                per_node.setdefault(p.node_name, []).append(p.real_time.total_seconds() * 1000.0)
                kind[p.node_name] = (p.node_type, p.exec_type)
    by_op: dict[str, float] = {}
    by_kernel: dict[str, float] = {}
    for node, times in per_node.items():
        node_type, exec_type = kind[node]
        by_op[node_type] = by_op.get(node_type, 0.0) + float(np.median(times))
        by_kernel[exec_type] = by_kernel.get(exec_type, 0.0) + float(np.median(times))
    return {**_summary(by_op), "kernels_ms": _top(by_kernel)}


def _summary(by_op: dict[str, float]) -> dict[str, Any]:
    return {"sum_of_node_medians_ms": round(sum(by_op.values()), 3), "by_op_ms": _top(by_op)}


def _top(values: dict[str, float], n: int = 10) -> dict[str, float]:
    return {k: round(v, 3) for k, v in sorted(values.items(), key=lambda kv: -kv[1])[:n]}


def _int8_ratios(variants: dict, samples: dict[str, list[float]], rows: dict) -> dict[str, Any]:
    """Per INT8 variant: speedup over its runtime's FP32 (median, range) and its file/weight ratios."""
    out = {}
    for vid, v in variants.items():
        if v.precision != "int8":
            continue
        base = next((f for f, w in variants.items() if w.runtime == v.runtime and w.precision == "fp32"), None)
        if base is None:
            continue
        out[vid] = {
            "vs": base,
            "speedup": ratio(samples[base], samples[vid]),
            "file_ratio": round(rows[vid]["file_bytes"] / rows[base]["file_bytes"], 4),
            "weight_ratio": round(rows[vid]["weight_bytes"] / rows[base]["weight_bytes"], 4),
            "gate": rows[vid]["gate"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON (default: a short summary)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (ratios: median, range)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and runs (a smoke test, noisy figures)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--keep", type=Path, help="keep the compiled outputs in this folder")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="one thread per session, timed by process CPU time (robust to a loaded host; implies --threads 1)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="per-op profiles of each INT8 variant and its FP32 (ORT, OpenVINO)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per session when timing (default: each runtime's own); 1 keeps a loaded host's "
        "scheduling out of multi-threaded runtimes' figures",
    )
    args = parser.parse_args(argv)
    if args.cpu_time:
        args.threads = 1
    names = [m for m in args.models.split(",") if m]
    bad = [m for m in names if m not in MODELS]
    if bad or args.rounds < 1:
        parser.error(f"--models: choose from {', '.join(MODELS)}; --rounds >= 1")
    host = read_host()
    work = args.keep or Path(tempfile.mkdtemp(prefix="tandem-precision-"))
    started = time.perf_counter()
    load_before = os.getloadavg()
    try:
        results = [
            bench_model(m, args.rounds, args.quick, args.threads, args.profile, args.cpu_time)
            for m in _models(names, work, args.quick)
        ]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "host": host.summary(),
        "host_features": sorted(
            host.cpu_features & {"avx2", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "fma"}
        ),
        "load_average": {"before": [round(v, 1) for v in load_before], "after": [round(v, 1) for v in os.getloadavg()]},
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "threads": args.threads or "runtime default",
        "clock": "process CPU time" if args.cpu_time else "wall clock",
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "models": results,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"host {report['host']}, load {report['load_average']}")
    for m in results:
        c = m["choices"].get("cpu-x86", {})
        print(
            f"{m['model']}: cpu-x86 chose {c.get('chosen')}: {c.get('speedup_vs_openvino_f32_dynamic')} x OpenVINO f32"
        )
        for vid, r in m["int8_vs_fp32"].items():
            print(f"  {vid} vs {r['vs']}: {r['speedup']} x faster, file {r['file_ratio']}x, gate {r['gate']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

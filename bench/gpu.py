"""GPU check (issue 20 item 5): the gpu-cuda profile's variants validated and timed on the
TensorRT and CUDA execution providers of the installed ONNX Runtime.

For each model (default: the digits edge model of examples/digits, and PP-OCR's mobile orientation
classifier and PP-OCRv4 detection from the rapidocr-onnxruntime wheel) it compiles the gpu-cuda
variants with the normal compiler (`tandem-compile`'s compile_model), then, for every execution
provider asked for (default: each of TensorRT and CUDA that onnxruntime.get_available_providers()
lists), opens each variant on that provider as the agent places it (the provider, the profile's
providers after it, the CPU last) and

- refuses to count a CPU run as a GPU pass: ORT's fallback is off, the session's providers are
  checked (ORT otherwise drops a provider it lacks or cannot start and runs on the CPU), and the
  first runs are profiled to count the nodes each provider ran; a provider that fails is reported
  on that variant with ORT's own message;
- runs the validation data through the compiler's run_dataset and judges the outputs with its
  compare_outputs and task gate against the FP32 reference on the CPU provider (and the accuracy
  budget select.py holds classifiers to), beside the gate the compile got on the CPU;
- times it at batch 1 in interleaved rounds with the FP32 variant on the CPU provider (every
  session once per round, the order rotated): p50 median and range, and the speed-up over CPU FP32.

With no GPU provider in onnxruntime it prints {"skipped": "<why, and the install line>"} and exits
0 (2 with --require-gpu). `--providers CPUExecutionProvider` runs the same code path on the CPU (a
dry run; its output says it is not a GPU check). Exit status: 0 when every variant got its provider
and no variant that passes the gate on the CPU fails it on the GPU, 1 otherwise, 2 as above.
How and when to run it on a GPU machine, and what was last measured: DEVELOPERS.md.

Usage: python bench/gpu.py [--json] [--require-gpu] [--providers P,...] [--models digits,ocr-cls,ocr-det]
                           [--model X.onnx --calib C.npz --val V.npz [--task KIND]]
                           [--rounds 5] [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests), not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_paths, host_info, log  # noqa: E402

add_paths()

from _gpu_ep import CPU, EPSession, ProviderError, captured_output, provider_chain  # noqa: E402

from tandem.hardware_profiles import get_profile  # noqa: E402
from tandem.hardware_profiles.probe import provider_tier  # noqa: E402
from tandem.hardware_profiles.runtimes import load_session  # noqa: E402
from tandem.model_compiler.host import read_host  # noqa: E402
from tandem.model_compiler import model_io  # noqa: E402
from tandem.model_compiler.data import load_dataset  # noqa: E402
from tandem.model_compiler.measure import in_rounds, measure_latency, round_ratios, spread  # noqa: E402
from tandem.model_compiler.measure import batch_of  # noqa: E402
from tandem.model_compiler.pipeline import CompileOptions, compile_model  # noqa: E402
from tandem.model_compiler.select import quality_drop_points  # noqa: E402
from tandem.model_compiler.validate import Task, compare_outputs, fixed_batch, run_dataset  # noqa: E402
from tandem.protocols.manifest import Manifest, load_manifest  # noqa: E402
from tandem.tasks import TaskSpec  # noqa: E402

PROFILE = "gpu-cuda"
GPU_EPS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
MODELS = ("digits", "ocr-cls", "ocr-det")
BASELINE = "baseline: onnxruntime-fp32 on CPUExecutionProvider"
INSTALL = (
    "on a machine with an NVIDIA GPU and its driver, in a fresh virtualenv: "
    "pip install -e '.[all,dev]' && pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu[cuda,cudnn]' "
    "(and, for TensorrtExecutionProvider, the tensorrt-cu12 major version that onnxruntime-gpu was built with), "
    "then python bench/gpu.py --json --require-gpu "
    "(DEVELOPERS.md)"
)
DRY_RUN = (
    "dry run on the CPU provider only: it exercises bench/gpu.py's code path (compile, provider check, "
    "placement, gate, timing); it is not a GPU check"
)
GATE_KEYS = ("task_gate", "task_metric", "task_value", "task_budget", "task_margin", "task_reason", "accuracy")


@dataclass
class Model:
    name: str
    source: Path
    calib: Path
    val: Path
    task: TaskSpec | None


def environment(requested: list[str]) -> dict[str, Any]:
    """What the figures were measured on: CPU features, GPUs, ONNX Runtime and its GPU libraries."""
    import onnxruntime as ort

    host = read_host()
    info: dict[str, Any] = {
        "host": {
            **{k: v for k, v in host_info().items() if k != "cpu_features"},
            "cpu": host.summary(),
            "cpu_model": _cpu_model(),
        },
        "onnxruntime": _ort_info(ort),
    }
    smi = shutil.which("nvidia-smi")
    if smi is None:
        info["nvidia_smi"] = "nvidia-smi not found"
    else:
        info["nvidia_smi"] = {
            "L": _command([smi, "-L"]),
            "gpus": _command(
                [smi, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]
            ),
        }
    if any(provider_tier(p) == "gpu" for p in requested) and hasattr(ort, "preload_dlls"):
        # CUDA/cuDNN from the nvidia-* wheels that onnxruntime-gpu[cuda,cudnn] installs (a no-op on CPU builds)
        with captured_output() as said:
            ort.preload_dlls()
        info["preload_dlls"] = said or "done"
    if "TensorrtExecutionProvider" in requested:
        try:  # importing tensorrt loads libnvinfer, which the TensorRT provider then finds
            import tensorrt

            info["tensorrt"] = str(tensorrt.__version__)
        except Exception as exc:  # ImportError, or its own loader errors: reported, the EP check will say more
            info["tensorrt"] = f"not importable: {type(exc).__name__}: {exc}"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


def _ort_info(ort: Any) -> dict[str, Any]:
    from onnxruntime.capi import build_and_package_info as build

    packages = {}
    for name in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu12", "nvidia-cudnn-cu12"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "version": ort.__version__,
        "package": getattr(build, "package_name", "?"),
        "cuda_version": getattr(build, "cuda_version", None),
        "cudnn_version": getattr(build, "cudnn_version", None),
        "device": ort.get_device(),
        "available_providers": list(ort.get_available_providers()),
        "build_info": ort.get_build_info(),
        "installed": packages,
    }


def _command(cmd: list[str]) -> list[str] | str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(cmd)} failed: {exc}"
    return done.stdout.strip().splitlines() or f"{' '.join(cmd)}: exit {done.returncode} {done.stderr.strip()}"


def skipped_reason(available: list[str], version: str) -> str:
    return (
        f"no GPU execution provider in the installed onnxruntime {version} (available: {', '.join(available)}): "
        f"nothing was checked on a GPU. To check: {INSTALL}"
    )


def named_models(names: list[str], work: Path, quick: bool) -> list[Model]:
    """The default models with their calibration and validation files (bench/compile.py makes the data)."""
    from compile import load_models

    wanted = ["digits-edge" if n == "digits" else n for n in names]
    out = []
    for m in load_models(wanted, work, quick):
        folder = work / m.name
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "calib.npz", x=m.calib)
        np.savez(folder / "val.npz", x=m.val, **({"y": m.labels} if m.labels is not None else {}))
        task = TaskSpec("dense") if m.name == "ocr-det" else TaskSpec("classification")
        out.append(Model(m.name, m.source, folder / "calib.npz", folder / "val.npz", task))
    return out


def compile_gpu_variants(model: Model, out: Path) -> Manifest:
    """The gpu-cuda variants as `tandem-compile --profiles gpu-cuda` builds and validates them (on this
    host's CPU provider; no timing or calibration: this bench times them itself)."""
    opts = CompileOptions(
        model=model.source,
        profiles=[PROFILE],
        calib=model.calib,
        val=model.val,
        out=out,
        signing_key=out.parent / "publisher.pem",
        task=model.task,
        timing=False,
        confidence_calibration=False,
        force=True,
    )
    compile_model(opts, progress=lambda m: log(f"{model.name}: {m}"))
    return load_manifest(out)


def reference(model: Model, manifest: Manifest, work: Path) -> tuple[Task, Any, list[np.ndarray], float | None]:
    """The compile's task and gate budgets (from its manifest), the validation data, and the FP32
    reference outputs on the CPU provider, prepared and run as the compiler does."""
    prepared, _ = model_io.prepare_model(model_io.load_model(model.source), work / "reference-fp32.onnx")
    inputs, outputs = model_io.io_specs(prepared)
    val = load_dataset(model.val, inputs, "validation")
    session = load_session("onnxruntime", work / "reference-fp32.onnx", graph_optimization=False)
    try:
        ref = run_dataset(session, val.inputs, val.axes)
    finally:
        session.close()
    spec = TaskSpec.from_dict(manifest.task)
    names = [o.name for o in outputs]
    recorded = manifest.source.get("reference", {})
    task = Task(spec, names.index(spec.output) if spec.output in names else 0, dict(recorded.get("task_budgets", {})))
    return task, val, ref, recorded.get("accuracy")


def check_model(model: Model, providers: list[str], work: Path, rounds: int, quick: bool) -> dict[str, Any]:
    out = work / model.name / "out"
    manifest = compile_gpu_variants(model, out)
    task, val, ref, ref_accuracy = reference(model, manifest, work / model.name)
    max_drop = CompileOptions.max_accuracy_drop
    profile_eps = next(t.execution_providers for t in get_profile(PROFILE).runtimes if t.runtime == "onnxruntime")
    variants = [v for v in manifest.variants if PROFILE in v.profiles and v.runtime == "onnxruntime"]
    rows: dict[str, dict[str, Any]] = {}
    sessions: dict[str, EPSession] = {}
    profiles_dir = work / model.name / "profiles"
    profiles_dir.mkdir(parents=True, exist_ok=True)
    for v in variants:
        path = out / v.files[0].path
        for ep in providers:
            key = f"{v.id}@{ep}"
            chain = provider_chain(ep, list(profile_eps))
            row: dict[str, Any] = {
                "variant": v.id,
                "precision": v.precision,
                "ep": ep,
                "providers_requested": chain,
                "cpu_gate": {k: v.metrics.get(k) for k in GATE_KEYS if k in v.metrics},
            }
            rows[key] = row
            log(f"{model.name}: {key}: opening on {chain}")
            try:
                session = EPSession(path, chain, profiles_dir)
                row["providers_got"] = session.providers
                got = run_dataset(session, val.inputs, val.axes)
                row["placement"] = session.placement().as_dict(ep)
            except ProviderError as exc:
                row.update(status="error", error=str(exc), **({"providers_got": exc.got} if exc.got else {}))
                log(f"{model.name}: {key}: {exc}")
                continue
            if row["placement"]["nodes_on_requested"] == 0:
                row.update(status="error", error=f"no node ran on {ep}: {row['placement']['nodes_by_provider']}")
                session.close()
                continue
            metrics = compare_outputs(task, ref, got, val.labels, CompileOptions.dense_threshold)
            drop = quality_drop_points(metrics, ref_accuracy)
            passed = metrics["task_gate"] == "pass" and drop <= max_drop
            row["gate"] = {k: metrics[k] for k in GATE_KEYS if k in metrics}
            row["gate"].update(max_abs_error=metrics["max_abs_error"], quality_drop_points=round(drop, 4))
            row["status"] = "pass" if passed else "fail"
            cpu_drop = quality_drop_points(v.metrics, ref_accuracy)  # the compile's own figures, same rule
            row["cpu_gate"]["quality_drop_points"] = round(cpu_drop, 4)
            if not passed and v.metrics.get("task_gate") == "pass" and cpu_drop <= max_drop:
                row["regression"] = "passes the gate on the CPU provider, fails it here"
            sessions[key] = session
    timing = _time(sessions, _fp32_file(variants, out), val, rounds, quick)
    for key, row in rows.items():
        if key in timing["latency"]:
            row["latency_ms"] = timing["latency"][key]
            row["speedup_vs_cpu_fp32"] = timing["speedup"].get(key)
    return {
        "model": model.name,
        "source": str(model.source),
        "task": manifest.task,
        "compile_choice": manifest.profiles[PROFILE].chosen if PROFILE in manifest.profiles else None,
        "baseline": {"id": BASELINE, "latency_ms": timing["latency"].get(BASELINE)},
        "variants": list(rows.values()),
    }


def _fp32_file(variants: list[Any], out: Path) -> Path | None:
    """The FP32 variant's file: the baseline every session is timed against (on the CPU provider)."""
    fp32 = next((v for v in variants if v.precision == "fp32"), None)
    return out / fp32.files[0].path if fp32 else None


def _time(
    sessions: dict[str, EPSession], fp32: Path | None, val: Any, rounds: int, quick: bool
) -> dict[str, dict[str, Any]]:
    """p50 at batch 1 per session per round, interleaved with the FP32 variant on the CPU provider."""
    if not sessions:
        return {"latency": {}, "speedup": {}}
    timed: dict[str, Any] = dict(sessions)
    if fp32 is not None:
        timed[BASELINE] = EPSession(fp32, [CPU])
    first = next(iter(timed.values()))
    feeds = batch_of(val.inputs, fixed_batch(first, val.axes) or 1, val.axes)
    kw: dict[str, Any] = (
        dict(warmup=10, runs=20, max_seconds=0.3) if quick else dict(warmup=20, runs=200, max_seconds=2.0)
    )

    def step(session: Any) -> Any:
        return lambda: measure_latency(session, feeds, **kw).p50_ms

    log(f"timing {len(timed)} sessions in {rounds} interleaved rounds")
    samples = in_rounds({k: step(s) for k, s in timed.items()}, rounds)
    for s in timed.values():
        s.close()
    latency = {k: spread(v).as_dict(4) for k, v in samples.items()}
    speedup = {k: round_ratios(samples[BASELINE], v).as_dict() for k, v in samples.items() if BASELINE in samples}
    speedup.pop(BASELINE, None)
    return {"latency": latency, "speedup": speedup}


def summarize(models: list[dict[str, Any]]) -> dict[str, int]:
    rows = [r for m in models for r in m["variants"]]
    return {
        "pass": sum(r["status"] == "pass" for r in rows),
        "fail": sum(r["status"] == "fail" for r in rows),
        "error": sum(r["status"] == "error" for r in rows),
        "regressions": sum("regression" in r for r in rows),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the result as JSON (default: a short table)")
    p.add_argument("--require-gpu", action="store_true", help="exit 2 when onnxruntime has no GPU provider")
    p.add_argument(
        "--providers",
        help="comma-separated execution providers to check (default: TensorRT and CUDA, those present); "
        "CPUExecutionProvider gives a dry run of the same code path",
    )
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--model", type=Path, help="check this ONNX model instead of --models (needs --calib and --val)")
    p.add_argument("--calib", type=Path, help="calibration .npz for --model (as tandem-compile --calib)")
    p.add_argument("--val", type=Path, help="validation .npz for --model (as tandem-compile --val)")
    p.add_argument("--task", help="the task of --model (classification, dense, ...; default: inferred)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median and range)")
    p.add_argument("--quick", action="store_true", help="less data and fewer timed runs (a smoke test)")
    p.add_argument("--keep", type=Path, help="keep the compiled variants in this folder")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.model is not None and (args.calib is None or args.val is None):
        parser.error("--model needs --calib and --val")
    names = [m for m in args.models.split(",") if m]
    if args.model is None and (not names or any(m not in MODELS for m in names)):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    present = [p for p in GPU_EPS if p in available]
    requested = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else present
    if not present and (args.require_gpu or not args.providers):
        result: dict[str, Any] = {"bench": "gpu", "skipped": skipped_reason(available, ort.__version__)}
        result["environment"] = environment([])
        _emit(result, args.json)
        return 2 if args.require_gpu else 0
    dry = all(provider_tier(p) == "cpu" for p in requested)
    info = environment(requested)
    work = args.keep or Path(tempfile.mkdtemp(prefix="tandem-gpu-"))
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        if args.model is not None:
            task = TaskSpec(args.task) if args.task else None
            models = [Model(args.model.stem, args.model, args.calib, args.val, task)]
        else:
            models = named_models(names, work, args.quick)
        results = [check_model(m, requested, work, args.rounds, args.quick) for m in models]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(results)
    result = {
        "bench": "gpu",
        "profile": PROFILE,
        "providers": requested,
        "dry_run": DRY_RUN if dry else False,
        "environment": info,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "rounds": args.rounds,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "models": results,
    }
    _emit(result, args.json)
    return 0 if summary["error"] == 0 and summary["regressions"] == 0 else 1


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    if "skipped" in result:
        print(f"skipped: {result['skipped']}")
        return
    if result["dry_run"]:
        print(f"NOTE: {result['dry_run']}")
    print(f"providers {result['providers']}; load {result['load_average']}; summary {result['summary']}")
    for m in result["models"]:
        print(f"{m['model']} (compile chose {m['compile_choice']}; CPU FP32 {m['baseline']['latency_ms']} ms)")
        for r in m["variants"]:
            g = r.get("gate", {})
            figure = (
                f"{g['task_metric']} {g['task_value']:.4f}" if g.get("task_metric") else f"accuracy {g.get('accuracy')}"
            )
            speed = (r.get("speedup_vs_cpu_fp32") or {}).get("median")
            detail = f"{figure}, {speed}x CPU FP32" if r["status"] != "error" else r["error"][:300]
            print(f"  {r['variant']:<24} {r['ep']:<26} {r['status']:<5} {detail}")


if __name__ == "__main__":
    raise SystemExit(main())

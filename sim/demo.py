"""The demo behind `tandem-sim demo` (`make demo`): Tandem's main job on one machine.

Today it trains the digits models, compiles them for every hardware profile and
summarises the result; the fleet, hub and rollout steps join as those parts land.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from model_compiler.pipeline import CompileOptions, CompileResult, compile_model

EDGE_PROFILES = ["cpu-x86", "cpu-arm", "gpu-cuda", "gpu-intel", "npu-intel", "npu-litert"]
CLOUD_PROFILES = ["cpu-x86"]


def _train_digits(out: Path) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "digits"))
    import train  # examples/digits/train.py

    return train.train(out)


def run_demo(workdir: Path, say: Callable[[str], None] = print) -> dict[str, object]:
    """Run every step; return a summary dict (also written to workdir/summary.json)."""
    started = time.perf_counter()
    data = workdir / "digits"
    say(f"1/3 training the digits edge and cloud models into {data}")
    scores = _train_digits(data)
    say(f"    edge test accuracy {scores['edge_test_accuracy']:.3f}, cloud {scores['cloud_test_accuracy']:.3f}")

    results: dict[str, CompileResult] = {}
    for step, (name, profiles) in enumerate((("edge", EDGE_PROFILES), ("cloud", CLOUD_PROFILES)), start=2):
        say(f"{step}/3 compiling digits-{name} for {', '.join(profiles)}")
        opts = CompileOptions(model=data / f"{name}.onnx", profiles=profiles, calib=data / "calib.npz",
                              val=data / "val.npz", out=workdir / "models" / f"digits-{name}", name=f"digits-{name}",
                              signing_key=workdir / "keys" / "release-ed25519.pem", timing_seconds=0.5, force=True)
        results[name] = compile_model(opts, progress=lambda m: say(f"    {m}"))

    edge = results["edge"].manifest
    summary = {
        "workdir": str(workdir),
        "seconds": round(time.perf_counter() - started, 1),
        "edge_report": str(results["edge"].out / "report.md"),
        "cloud_report": str(results["cloud"].out / "report.md"),
        "chosen": {p: c.chosen for p, c in edge.profiles.items()},
        "variants": {v.id: {"agreement": v.metrics.get("agreement"), "accuracy": v.metrics.get("accuracy"),
                            "p50_ms": v.metrics.get("latency_p50_ms"), "bytes": v.metrics.get("file_bytes")}
                     for v in edge.variants},
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    lines = ["", "Tandem demo finished in {seconds}s.".format(**summary), "",
             "The digits edge model was compiled into these variants (validated against FP32 on held-out digits):", ""]
    lines.append(f"  {'variant':28} {'agreement':>9} {'accuracy':>8} {'p50 ms':>8} {'size':>9}")
    for vid, m in summary["variants"].items():
        acc = f"{m['accuracy']:.3f}" if m.get("accuracy") is not None else "-"
        p50 = f"{m['p50_ms']:.3f}" if m.get("p50_ms") is not None else "-"
        lines.append(f"  {vid:28} {m['agreement']:9.4f} {acc:>8} {p50:>8} {m['bytes'] / 1024:8.1f}K")
    lines += ["", "Each hardware profile gets the variant that suits it:", ""]
    for profile, chosen in summary["chosen"].items():
        lines.append(f"  {profile:12} -> {chosen or 'nothing fits (see report)'}")
    lines += ["", f"Reports: {summary['edge_report']}", f"         {summary['cloud_report']}", ""]
    return "\n".join(lines)

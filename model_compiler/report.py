"""The compile report: a Markdown table a person reads at a glance, and the same as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from tandem.hardware_profiles import Profile
from tandem.hardware_profiles.probe import provider_tier
from tandem.model_compiler.select import Candidate, fp32_bars, speedup_over

if TYPE_CHECKING:
    from tandem.model_compiler.pipeline import CompileResult, VariantOutcome

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
GPU_CHECK = "run bench/gpu.py on a GPU machine (DEVELOPERS.md)"


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _task_figure(x: dict[str, Any]) -> str:
    """The gated task metric of a variant, e.g. `map50 0.9312`."""
    if x.get("task_metric") is None:
        return "-"
    return f"{x['task_metric']} {_fmt(x.get('task_value'), 4)}"


def validation_note(ran_on: Sequence[str] | None, wanted: Iterable[str]) -> str | None:
    """Where a variant was validated, when that is not where its profiles want it run: the gate and
    figures of a GPU profile's variant come from this host's CPU provider until a GPU machine runs it
    (the same FP16/INT8 graph can lose accuracy, or not place on the GPU at all, there)."""
    if ran_on is None:
        return None
    missing = [p for p in dict.fromkeys(wanted) if p not in ran_on and provider_tier(p) != "cpu"]
    if not missing:
        return None
    where = ", ".join(ran_on) or "no provider"
    if set(missing) <= set(GPU_PROVIDERS):
        return f"validated on {where}; not yet on CUDA/TensorRT: {GPU_CHECK}"
    return f"validated on {where}; not yet on {', '.join(missing)}: validate it on a device that has them"


def note_where_validated(outcomes: list["VariantOutcome"], profiles: list[Profile]) -> None:
    """Add `validation_note` to each built variant's notes (the manifest's variant notes and the report)."""
    by_name = {p.name: p for p in profiles}
    for o in outcomes:
        if o.built is None or o.skipped:
            continue
        wanted = [
            ep
            for name in o.profiles
            if name in by_name
            for target in by_name[name].runtimes
            if target.runtime == o.recipe.runtime
            for ep in target.execution_providers
        ]
        note = validation_note(o.metrics.get("validated_on"), wanted)
        if note and note not in o.built.notes:
            o.built.notes.append(note)


def report_dict(result: "CompileResult") -> dict[str, Any]:
    """Everything the Markdown shows, for machines (`tandem-compile --json`)."""
    m = result.manifest
    return {
        "name": m.name,
        "version": m.version,
        "out": str(result.out),
        "manifest": str(result.out / "manifest.json"),
        "task": m.task,
        "source": m.source,
        "host": result.host,
        "notes": result.notes,
        "profiles": {
            name: {"chosen": c.chosen, "reason": c.reason, "candidates": c.candidates, "skipped": c.skipped}
            for name, c in m.profiles.items()
        },
        "speedups_vs_fp32": speedups(result),
        "variants": [
            {
                "id": o.recipe.id,
                "runtime": o.recipe.runtime,
                "precision": o.recipe.precision,
                "profiles": o.profiles,
                "status": "skipped" if o.skipped else "ok",
                "reason": o.skipped,
                "build_seconds": round(o.build_seconds, 2),
                "metrics": o.metrics,
                "notes": list(o.built.notes) if o.built else [],
                "calibration": o.calibration,
            }
            for o in result.outcomes
        ],
    }


def render_markdown(result: "CompileResult") -> str:
    m = result.manifest
    ref = m.source.get("reference", {})
    host = result.host
    lines = [
        f"# {m.name} {m.version}: compile report",
        "",
        f"- source: `{m.source.get('file')}` (opset {m.source.get('opset')}, weights {_fmt_bytes(m.source.get('weight_bytes'))})",
        f"- task: {m.task.get('kind')} on output `{m.task.get('output')}`"
        + (f"; FP32 reference accuracy {ref['accuracy']:.4f}" if "accuracy" in ref else ""),
        f"- task spec: `{json.dumps(m.task, sort_keys=True)}` ({ref.get('task_reason', 'from the manifest')})",
        "- task gate: "
        + (", ".join(f"{k} {v:g}" for k, v in ref.get("task_budgets", {}).items()) or "none")
        + ". The gate decides; `agreement` is top-1 for classifiers and element-wise (informational) otherwise.",
        f"- host: {host.get('cpu_model', '?')} ({host.get('machine', '?')}; features: {', '.join(host.get('features', [])) or 'none detected'})."
        " Latency and throughput are measured on this host, not on the target devices.",
    ]
    lines += [f"- note: {n}" for n in result.notes]
    lines += ["", "## Chosen variant per profile", "", "| profile | chosen | why |", "| --- | --- | --- |"]
    for name, choice in m.profiles.items():
        lines.append(f"| {name} | {choice.chosen or '**none**'} | {choice.reason} |")
    lines += [
        "",
        "## Variants (validated against the FP32 reference)",
        "",
        "| variant | runtime | precision | size | weights | task metric | gate | agreement | accuracy | max abs err | p50 ms (b1) | p95 ms | samples/s (b8) | profiles |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for o in result.outcomes:
        if o.skipped:
            continue
        x = o.metrics
        lines.append(
            f"| {o.recipe.id} | {o.recipe.runtime} | {o.recipe.precision} | {_fmt_bytes(x.get('file_bytes'))} | "
            f"{_fmt_bytes(x.get('weight_bytes'))} | {_task_figure(x)} | {x.get('task_gate', '-')} | "
            f"{_fmt(x.get('agreement'), 4)} | {_fmt(x.get('accuracy'), 4)} | "
            f"{_fmt(x.get('max_abs_error'), 5)} | {_fmt(x.get('latency_p50_ms'))} | {_fmt(x.get('latency_p95_ms'))} | "
            f"{_fmt(x.get('throughput_b8'), 0)} | {', '.join(o.profiles)} |"
        )
    where = [(o.recipe.id, n) for o in result.outcomes if o.built and not o.skipped for n in o.built.notes]
    where = [(rid, n) for rid, n in where if n.startswith("validated on ")]
    if where:
        lines += ["", "## Where variants were validated", ""] + [f"- {rid}: {n}" for rid, n in where]
    lines += _speedup_lines(result)
    calibrated = [(o, o.calibration) for o in result.outcomes if o.calibration and not o.skipped]
    if calibrated:
        goal = calibrated[0][1]["goal"]
        lines += [
            "",
            "## Confidence calibration (per variant)",
            "",
            f"Goal: {goal['kind']} ({', '.join(f'{k} {v}' for k, v in goal.items() if k not in ('kind', 'met_on_fit') and v is not None)}). "
            f"{calibrated[0][1]['fit']['split']}.",
            "",
            "| variant | temperature | threshold | expected fallback | expected accuracy | expected hybrid accuracy |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for o, c in calibrated:
            lines.append(
                f"| {o.recipe.id} | {_fmt(c['temperature'])} | {_fmt(c['threshold'], 4)} | "
                f"{_fmt(c['expected_fallback_rate'], 4)} | {_fmt(c.get('expected_accuracy'), 4)} | "
                f"{_fmt(c.get('expected_hybrid_accuracy'), 4)} |"
            )
    skipped = [o for o in result.outcomes if o.skipped]
    per_profile = [(name, s) for name, c in m.profiles.items() for s in c.skipped]
    if skipped or per_profile:
        lines += ["", "## Skipped or rejected", "", "| variant | profile(s) | reason |", "| --- | --- | --- |"]
        for o in skipped:
            lines.append(f"| {o.recipe.id} | {', '.join(o.profiles)} | {o.skipped} |")
        seen = {o.recipe.id for o in skipped}
        for name, s in per_profile:
            if s.get("variant") not in seen:
                lines.append(f"| {s.get('variant')} | {name} | {s.get('reason')} |")
    return "\n".join(lines) + "\n"


def speedups(result: "CompileResult") -> list[dict[str, Any]]:
    """Each reduced-precision variant's speed over its runtime's FP32 (the bar select.py holds it
    to): median and range of the per-round ratios when both were timed in the same rounds."""
    cands = [
        Candidate(o.recipe.id, o.recipe.runtime, o.recipe.precision, o.metrics)
        for o in result.outcomes
        if o.built and not o.skipped
    ]
    bars = fp32_bars(cands)
    rows = []
    for c in cands:
        base = bars.get(c.runtime)
        if c.precision == "fp32" or base is None:
            continue
        speed = speedup_over(c, base)
        if speed is None:
            continue
        rows.append(
            {
                "variant": c.id,
                "vs": base.id,
                "speedup": speed.as_dict(),
                "rounds": len(c.metrics.get("latency_rounds_ms") or []),
            }
        )
    return rows


def _speedup_lines(result: "CompileResult") -> list[str]:
    rows = speedups(result)
    if not rows:
        return []
    lines = [
        "",
        "## Reduced precision against the same runtime's FP32",
        "",
        "Speed-up = FP32 time / variant time within each interleaved timing round (every variant once "
        "per round, the order rotated): the median and range over rounds. Below 1.00x a CPU profile refuses the variant.",
        "",
        "| variant | vs | speed-up (median) | range | rounds |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for r in rows:
        s = r["speedup"]
        lines.append(
            f"| {r['variant']} | {r['vs']} | {s['median']:.2f}x | {s['min']:.2f}-{s['max']:.2f}x | {r['rounds'] or '-'} |"
        )
    return lines


def write_reports(result: "CompileResult") -> tuple[Path, Path]:
    """report.md and report.json beside the manifest."""
    md = result.out / REPORT_MD
    js = result.out / REPORT_JSON
    md.write_text(render_markdown(result), encoding="utf-8")
    js.write_text(json.dumps(report_dict(result), indent=2, default=float) + "\n", encoding="utf-8")
    return md, js

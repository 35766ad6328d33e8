"""Choose one variant per hardware profile: a pure function of figures and budgets.

CPU profiles rank by latency measured on this host, and never take a reduced-precision
variant (INT8, FP16, bf16) that ran slower here than the same runtime's FP32, judged on
the ratio within each interleaved timing round: it would cost accuracy for nothing (measured: INT8 was 1.3-1.45x slower than FP32 on PP-OCR's
small orientation classifier in every runtime). Accelerator profiles (GPU, NPU)
cannot be timed here, so they rank by the profile's precision preference first and
host latency second; the reason says which rule applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandem.hardware_profiles import Profile
from tandem.model_compiler.measure import Spread, relative_times, round_ratios
from tandem.protocols.manifest import ProfileChoice


@dataclass(frozen=True)
class Candidate:
    """A validated variant as the chooser sees it."""

    id: str
    runtime: str
    precision: str
    metrics: dict[str, Any] = field(default_factory=dict)


def quality_drop_points(metrics: dict[str, Any], reference_accuracy: float | None) -> float:
    """Accuracy lost against the FP32 reference, in points; disagreement when there are no labels.

    Classifiers only: for other tasks the element-wise "agreement" is informational and the
    task gate (tandem.tasks) decides, so the drop is 0 here.
    """
    if "task_gate" in metrics and "top1_agreement" not in metrics:
        return 0.0
    if reference_accuracy is not None and "accuracy" in metrics:
        return (reference_accuracy - float(metrics["accuracy"])) * 100.0
    return (1.0 - float(metrics.get("agreement", 0.0))) * 100.0


def choose_for_profile(
    profile: Profile,
    candidates: list[Candidate],
    *,
    max_accuracy_drop: float,
    reference_accuracy: float | None,
    skipped: list[dict[str, str]] | None = None,
) -> ProfileChoice:
    """The fastest candidate the profile can run within its accuracy and size budgets."""
    rejected = list(skipped or [])
    eligible: list[Candidate] = []
    budget_bytes = profile.model_size_budget_mb * 1024 * 1024
    fp32 = fp32_bars(candidates) if profile.device_class == "cpu" else {}
    for cand in candidates:
        if not profile.allows(cand.runtime, cand.precision):
            continue
        slower = slower_than_fp32(cand, fp32)
        if slower:
            rejected.append({"variant": cand.id, "reason": slower})
            continue
        drop = quality_drop_points(cand.metrics, reference_accuracy)
        size = float(cand.metrics.get("file_bytes", 0))
        if cand.metrics.get("task_gate") == "fail":
            rejected.append({"variant": cand.id, "reason": f"breaks the task: {cand.metrics.get('task_reason')}"})
        elif drop > max_accuracy_drop:
            rejected.append(
                {"variant": cand.id, "reason": f"quality drop {drop:.2f} points > budget {max_accuracy_drop:g}"}
            )
        elif size > budget_bytes:
            rejected.append(
                {
                    "variant": cand.id,
                    "reason": f"size {size / 2**20:.1f} MiB > profile budget {profile.model_size_budget_mb:g} MiB",
                }
            )
        else:
            eligible.append(cand)
    if not eligible:
        return ProfileChoice(
            chosen=None,
            reason="no variant passes this profile's runtimes, precisions and budgets",
            candidates=[],
            skipped=rejected,
        )

    def latency(c: Candidate) -> float:
        return float(c.metrics.get("latency_p50_ms", float("inf")))

    speed = rank_times(candidates)
    if profile.device_class == "cpu":
        ranked = sorted(eligible, key=lambda c: (speed.get(c.id, float("inf")), c.id))
        best = ranked[0]
        if latency(best) == float("inf"):  # --no-timing: never report "inf ms"
            reason = (
                f"no host timing (--no-timing), so the first eligible variant by name ({_size_mib(best)}), "
                f"within {_budget_words(best, max_accuracy_drop)}"
            )
        else:
            rounds = len(best.metrics.get("latency_rounds_ms") or [])
            reason = (
                f"fastest on this host ({latency(best):.3f} ms p50"
                + (f", median of {rounds} interleaved rounds" if rounds > 1 else "")
                + f") within {_budget_words(best, max_accuracy_drop)}"
                + (f"; {caveat}" if (caveat := _host_caveat(profile, best)) else "")
            )
    else:
        order = {p: i for i, p in enumerate(profile.precisions)}
        ranked = sorted(
            eligible, key=lambda c: (order.get(c.precision, len(order)), speed.get(c.id, float("inf")), c.id)
        )
        best = ranked[0]
        reason = (
            f"{profile.device_class.upper()} not on this host: preferred precision {best.precision} "
            f"(profile order {', '.join(profile.precisions)}), then host latency, within {_budget_words(best, max_accuracy_drop)}"
        )
    return ProfileChoice(chosen=best.id, reason=reason, candidates=[c.id for c in ranked], skipped=rejected)


def fp32_latency_by_runtime(candidates: list[Candidate]) -> dict[str, tuple[str, float]]:
    """Per runtime, its fastest timed FP32 candidate (id, p50 ms), whatever its budgets: the bar a
    reduced-precision variant of that runtime must beat."""
    best: dict[str, tuple[str, float]] = {}
    for c in candidates:
        ms = c.metrics.get("latency_p50_ms")
        if c.precision == "fp32" and ms is not None and (c.runtime not in best or float(ms) < best[c.runtime][1]):
            best[c.runtime] = (c.id, float(ms))
    return best


def speedup_over(cand: Candidate, base: Candidate) -> Spread | None:
    """How many times faster `cand` ran than `base`, judged round by round where both were timed
    in the same interleaved rounds (`latency_rounds_ms`, model_compiler/timing.py): median and
    range of the per-round ratios. Figures from separate runs give a one-point spread of their
    p50s; None when either is untimed."""
    mine, theirs = cand.metrics.get("latency_rounds_ms"), base.metrics.get("latency_rounds_ms")
    if mine and theirs and len(mine) == len(theirs):
        try:
            return round_ratios([float(v) for v in theirs], [float(v) for v in mine])
        except ValueError:
            return None
    ms, ref_ms = cand.metrics.get("latency_p50_ms"), base.metrics.get("latency_p50_ms")
    if ms is None or ref_ms is None or float(ms) <= 0:
        return None
    ratio = float(ref_ms) / float(ms)
    return Spread(ratio, ratio, ratio)


def rank_times(candidates: list[Candidate]) -> dict[str, float]:
    """What ranks the timed candidates, lower is faster: their time relative to the others within
    each interleaved round (measure.relative_times) when all were timed in the same rounds, else
    their p50 (figures from separate runs, or hand-made ones)."""
    timed = {
        c.id: float(c.metrics["latency_p50_ms"]) for c in candidates if c.metrics.get("latency_p50_ms") is not None
    }
    rounds = {
        c.id: [float(v) for v in c.metrics["latency_rounds_ms"]]
        for c in candidates
        if c.id in timed and c.metrics.get("latency_rounds_ms")
    }
    relative = relative_times(rounds)
    return relative if relative and set(relative) == set(timed) else timed


def fp32_bars(candidates: list[Candidate]) -> dict[str, Candidate]:
    """Per runtime, its fastest timed FP32 candidate (by rank_times), whatever its budgets: the bar a
    reduced-precision variant of that runtime must beat."""
    speed = rank_times(candidates)
    bars: dict[str, Candidate] = {}
    for c in candidates:
        if c.precision == "fp32" and c.id in speed:
            if c.runtime not in bars or speed[c.id] < speed[bars[c.runtime].id]:
                bars[c.runtime] = c
    return bars


def slower_than_fp32(cand: Candidate, fp32: dict[str, Candidate]) -> str | None:
    """Why `cand` is refused for running slower than its runtime's FP32 on this host, or None.
    Judged on the median of per-round ratios, so a load spell during one variant's turn cannot
    make it look slower (or faster) than it is."""
    base = fp32.get(cand.runtime)
    if cand.precision == "fp32" or base is None or base.id == cand.id:
        return None
    speed = speedup_over(cand, base)
    if speed is None or speed.median >= 1.0:
        return None
    return (
        f"slower than {base.id} on this host ({_speed_words(speed)}; "
        f"{float(cand.metrics['latency_p50_ms']):.3f} ms vs {float(base.metrics['latency_p50_ms']):.3f} ms p50): "
        f"{cand.precision} would cost accuracy for no speed"
    )


def _speed_words(speed: Spread) -> str:
    """`1.31x its time`, or over interleaved rounds `1.31x its time, median of rounds (1.25-1.40)`."""
    text = f"{1.0 / speed.median:.2f}x its time"
    if speed.low != speed.high:
        text += f", median of rounds ({1.0 / speed.high:.2f}-{1.0 / speed.low:.2f})"
    return text


def _host_caveat(profile: Profile, best: Candidate) -> str:
    """What a bf16 choice needs from the profile's devices when the profile does not promise it."""
    if best.precision == "bf16" and not {"avx512_bf16", "amx_bf16"} & set(profile.cpu_features):
        return "its speed needs avx512_bf16 or amx_bf16 (this host has them; a CPU without runs it in f32)"
    return ""


def _budget_words(cand: Candidate, max_accuracy_drop: float) -> str:
    """The budget the chosen variant met, in the words of its task."""
    m = cand.metrics
    if "top1_agreement" in m or "task_gate" not in m:
        return f"a {max_accuracy_drop:g}-point quality budget"
    if m.get("task_metric") is None:
        return "its budgets (no task metric)"
    return f"the task budget ({m['task_reason']}, margin {float(m['task_margin']):+.4f})"


def _size_mib(cand: Candidate) -> str:
    return f"{float(cand.metrics.get('file_bytes', 0)) / 2**20:.1f} MiB"

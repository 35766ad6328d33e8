"""Which quantized chain tensors to leave float so an INT8 model keeps its task gate, found per model.

Quantizing the Add/Mul chains between convolutions makes ONNX Runtime's INT8 fast, but a few
tensors can cost the task its gate (PP-OCRv4 det: one HardSwish input of 186 chain tensors takes
the mask IoU from 0.94 to 0.90). The search measures the task metric, on the calibration data
against FP32, with candidates left float (ort_qdq_graph.unquantize), and keeps the rest quantized:

1. every chain quantized: done if it clears the gate with the required margin;
2. every chain tensor float: the headroom (its margin) the chains can spend; the required margin
   is `share` of it; if even this fails the gate, the search gives up;
3. per chain group, the gain of leaving that group float;
4. groups in order of gain, and inside each group its tensors one at a time (the best next tensor
   each step), until the margin is met;
5. out of time or of candidates: every tensor of every group with a gain goes float, then all.

Bounded by `seconds` (checked between evaluations; each evaluation runs the calibration set once).
The core takes an `evaluate` callable, so a test can drive it with a fake metric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

# The margin the search asks for, as a share of the margin with every chain float: the
# calibration set chooses the tensors, the held-out validation set judges the result, so the
# choice must not sit on the gate's edge.
DEFAULT_SHARE = 0.25
DEFAULT_SECONDS = 240.0
# A tensor whose gain (in the gate's units) is not above this does not count as helping.
MIN_GAIN = 1e-6


@dataclass(frozen=True)
class Candidate:
    """A chain group and the tensors that leaving it float un-quantizes."""

    label: str
    tensors: tuple[str, ...]


@dataclass
class SearchResult:
    """The tensors left float, the margin that bought, and how the search got there."""

    float_tensors: list[str]
    margin: float
    required: float
    all_quantized_margin: float
    all_float_margin: float
    evaluations: int
    seconds: float
    ran_out_of_time: bool
    why: dict[str, str] = field(default_factory=dict)  # tensor -> why it stayed float

    def summary(self) -> str:
        return (
            f"{len(self.float_tensors)} chain tensor(s) left float, margin {self.margin:+.4f} "
            f"(required {self.required:+.4f}; all chains quantized {self.all_quantized_margin:+.4f}, "
            f"all float {self.all_float_margin:+.4f}); {self.evaluations} evaluations in {self.seconds:.0f} s"
            + (" (time limit reached)" if self.ran_out_of_time else "")
        )


class SearchFailed(Exception):
    """Even with every chain float the gate fails: the chains are not what costs the accuracy."""


def search(
    candidates: Sequence[Candidate],
    evaluate: Callable[[frozenset[str]], float],
    share: float = DEFAULT_SHARE,
    seconds: float = DEFAULT_SECONDS,
    log: Callable[[str], None] = lambda message: None,
    clock: Callable[[], float] = time.perf_counter,
) -> SearchResult:
    """The fewest chain tensors to leave float (greedily) so that `evaluate` (the gate's margin,
    larger is better, >= 0 passes) reaches `share` x the all-float margin."""
    started = clock()
    count = 0

    def margin(floated: frozenset[str]) -> float:
        nonlocal count
        count += 1
        return evaluate(floated)

    def late() -> bool:
        return clock() - started > seconds

    def result(chosen: frozenset[str], value: float, why: dict[str, str], out_of_time: bool) -> SearchResult:
        kept = [t for c in candidates for t in c.tensors if t in chosen]
        return SearchResult(kept, value, required, quantized, all_float, count, clock() - started, out_of_time, why)

    everything = frozenset(t for c in candidates for t in c.tensors)
    quantized = margin(frozenset())
    all_float = margin(everything)
    required = max(0.0, share * all_float)
    log(
        f"sensitivity search over {len(everything)} chain tensors in {len(candidates)} groups "
        f"(limit {seconds:.0f} s): all quantized margin {quantized:+.4f}, all float {all_float:+.4f}"
    )
    if all_float < 0:
        raise SearchFailed(f"even with all {len(everything)} chain tensors float the gate's margin is {all_float:+.4f}")
    if quantized >= required:
        return result(frozenset(), quantized, {}, False)
    gains: list[tuple[float, int]] = []
    for k, cand in enumerate(candidates):
        if late():
            log(f"time limit reached after {k} of {len(candidates)} groups")
            break
        gains.append((margin(frozenset(cand.tensors)) - quantized, k))
    gains.sort(key=lambda gk: (-gk[0], gk[1]))
    helping = [k for gain, k in gains if gain > MIN_GAIN]
    log(
        f"{len(helping)} of {len(candidates)} groups help; best: "
        + ", ".join(f"{candidates[k].label} {gain:+.4f}" for gain, k in gains[:3])
        + f" ({clock() - started:.0f} s)"
    )
    chosen: frozenset[str] = frozenset()
    value = quantized
    why: dict[str, str] = {}
    for k in helping:
        cand = candidates[k]
        remaining = [t for t in cand.tensors if t not in chosen]
        while remaining and value < required and not late():
            tried = [(margin(chosen | {t}), t) for t in remaining]
            best, tensor = max(tried)
            if best <= value + MIN_GAIN:
                break
            chosen, value = chosen | {tensor}, best
            remaining.remove(tensor)
            why[tensor] = f"{cand.label}: margin {best:+.4f} with it float"
            log(f"leave {tensor} float ({cand.label}): margin {best:+.4f} ({clock() - started:.0f} s)")
        if value >= required or late():
            break
    if value >= required:
        return result(chosen, value, why, False)
    # Out of time, or single tensors did not reach the margin: whole groups, then everything.
    whole = chosen | frozenset(t for k in helping for t in candidates[k].tensors)
    fallback = margin(whole) if whole != everything else all_float
    if fallback < required:
        whole, fallback = everything, all_float
    reason = "fallback: time limit" if late() else "fallback: single tensors did not reach the margin"
    why.update({t: reason for t in whole if t not in why})
    log(f"{reason}; {len(whole)} tensors float, margin {fallback:+.4f}")
    return result(whole, fallback, why, late())

"""The compiler times variants together in interleaved rounds and judges reduced precision on
ratios within a round (issue 20): timed one after another, a host whose load rose mid-compile
made whichever variant ran during the busy spell look slow, and the chooser picked wrong.

A fake clock whose speed drops 4x part-way through stands in for that load: the truly faster
INT8 variant must still be judged faster and chosen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pytest

from tandem.hardware_profiles import get_profile
from tandem.hardware_profiles.runtimes.base import IOSpec
from tandem.model_compiler.data import Dataset
from tandem.model_compiler.measure import in_rounds, measure_latency, round_ratios, rotations
from tandem.model_compiler.select import Candidate, choose_for_profile
from tandem.model_compiler.timing import Timed, time_sessions


@dataclass
class LoadedClock:
    """Seconds that pass only when a fake session runs; every call costs `slowdown` times more
    once the clock passes `load_at` (another process took the cores)."""

    load_at: float
    slowdown: float = 4.0
    now: float = 0.0
    order: list[str] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def spend(self, name: str, cost: float) -> None:
        self.order.append(name)
        self.now += cost * (self.slowdown if self.now >= self.load_at else 1.0)


@dataclass
class FakeSession:
    name: str
    cost: float  # seconds per call on an idle host
    clock: LoadedClock
    runtime: str = "fake"
    inputs: tuple[IOSpec, ...] = (IOSpec("x", "float32", (-1, 4)),)
    outputs: tuple[IOSpec, ...] = (IOSpec("y", "float32", (-1, 4)),)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.clock.spend(self.name, self.cost * len(feeds["x"]))
        return [feeds["x"]]

    def close(self) -> None:
        pass


def _val() -> Dataset:
    return Dataset({"x": np.zeros((16, 4), np.float32)}, None, "test")


def _candidates(timed: dict[str, Timed | str]) -> list[Candidate]:
    out = []
    for vid, got in timed.items():
        assert isinstance(got, Timed), got
        out.append(Candidate(vid, "onnxruntime", vid.split("-")[-1], {"agreement": 1.0, **got.metrics()}))
    return out


def test_rotations_run_every_variant_once_per_round_and_none_always_first():
    order = rotations(["a", "b", "c"], 4)
    assert order == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert all(sorted(r) == ["a", "b", "c"] for r in order)
    with pytest.raises(ValueError, match="rounds"):
        rotations(["a"], 0)
    assert in_rounds({"a": lambda: 1, "b": lambda: 2}, 3) == {"a": [1, 1, 1], "b": [2, 2, 2]}


def test_ratios_are_taken_within_each_round():
    # fp32 [10, 10, 40], int8 [8, 8, 32]: 1.25x faster in every round though the host slowed 4x
    got = round_ratios([10.0, 10.0, 40.0], [8.0, 8.0, 32.0])
    assert got.median == pytest.approx(1.25) and got.low == pytest.approx(1.25) and got.high == pytest.approx(1.25)
    with pytest.raises(ValueError):
        round_ratios([0.0], [1.0])


def test_a_load_spell_mid_compile_does_not_make_the_faster_int8_look_slower():
    # INT8 really takes 0.8x FP32's time. The load arrives in the third of five rounds:
    # one variant after the other, INT8 would be timed entirely under load (3.2 vs 1.0 per call).
    clock = LoadedClock(load_at=200.0)
    sessions = {
        "ort-fp32": FakeSession("ort-fp32", 1.0, clock),
        "ort-int8": FakeSession("ort-int8", 0.8, clock),
    }
    timed = time_sessions(sessions, _val(), rounds=5, seconds=1e9, clock=clock)
    fp32, int8 = timed["ort-fp32"], timed["ort-int8"]
    assert isinstance(fp32, Timed) and isinstance(int8, Timed)
    assert len(fp32.latency_rounds_ms) == 5 and len(int8.latency_rounds_ms) == 5
    # both saw idle and loaded rounds
    assert min(fp32.latency_rounds_ms) < 1500 < max(fp32.latency_rounds_ms)
    assert min(int8.latency_rounds_ms) < 1500 < max(int8.latency_rounds_ms)
    speed = round_ratios(fp32.latency_rounds_ms, int8.latency_rounds_ms)
    assert speed.median == pytest.approx(1.25)
    # fp32 had three idle rounds, int8 two: ranked by their absolute p50s, fp32 would win
    assert np.median(int8.latency_rounds_ms) > np.median(fp32.latency_rounds_ms)
    assert fp32.throughput_b8 is not None and int8.throughput_b8 is not None  # the batch is free: timed at 8 too
    choice = choose_for_profile(
        get_profile("cpu-x86"), _candidates(timed), max_accuracy_drop=1.0, reference_accuracy=None
    )
    assert choice.chosen == "ort-int8", choice
    assert not choice.skipped


def test_an_int8_slower_in_every_round_is_refused_with_the_range_over_rounds():
    clock = LoadedClock(load_at=25.0)
    sessions = {
        "ort-fp32": FakeSession("ort-fp32", 1.0, clock),
        "ort-int8": FakeSession("ort-int8", 1.3, clock),
    }
    timed = time_sessions(sessions, _val(), rounds=5, seconds=1e9, clock=clock)
    choice = choose_for_profile(
        get_profile("cpu-x86"), _candidates(timed), max_accuracy_drop=1.0, reference_accuracy=None
    )
    assert choice.chosen == "ort-fp32"
    reason = choice.skipped[0]["reason"]
    assert choice.skipped[0]["variant"] == "ort-int8" and "slower than ort-fp32" in reason
    assert "1.30x its time" in reason and "median of rounds" in reason


def test_a_runtime_error_while_timing_drops_only_that_variant():
    clock = LoadedClock(load_at=1e9)

    class Broken(FakeSession):
        def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            raise RuntimeError("kernel exploded\nsecond line")

    timed = time_sessions(
        {"ok": FakeSession("ok", 0.001, clock), "bad": Broken("bad", 0.001, clock)}, _val(), rounds=3, clock=clock
    )
    assert timed["bad"] == "RuntimeError: kernel exploded"
    assert isinstance(timed["ok"], Timed) and len(timed["ok"].latency_rounds_ms) == 3


def test_measure_latency_reads_the_clock_it_is_given():
    clock = LoadedClock(load_at=1e9)
    stats = measure_latency(FakeSession("a", 0.002, clock), {"x": np.zeros((1, 4))}, warmup=0, runs=7, clock=clock)
    assert stats.runs == 7 and stats.p50_ms == pytest.approx(2.0)


def test_timing_rounds_flag_parses_and_zero_is_refused_by_name(tmp_path):
    from tandem.model_compiler.cli import build_parser
    from tandem.model_compiler.errors import CompileError
    from tandem.model_compiler.pipeline import CompileOptions, compile_model

    args = build_parser().parse_args(["m.onnx", "--timing-rounds", "3"])
    assert args.timing_rounds == 3 and build_parser().parse_args(["m.onnx"]).timing_rounds == 5
    opts = CompileOptions(
        model=tmp_path / "m.onnx",
        profiles=["cpu-x86"],
        calib=tmp_path / "c.npz",
        val=tmp_path / "v.npz",
        out=tmp_path / "out",
        timing_rounds=0,
    )
    with pytest.raises(CompileError, match="--timing-rounds must be >= 1"):
        compile_model(opts)

"""bench/peers.py's judging: per-repetition ratios become median and range, and issue 20's hub targets
are met only when every repetition (throughput) or the median (CPU, OCR floor) says so. The servers
themselves run in the bench (`python bench/peers.py --json`), not here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    sys.path.insert(0, str(ROOT / "bench"))  # peers.py imports _common and _peers_load beside it
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


peers = _load_bench()


def _run(rps: float, cpu_ms: float, refused: int = 0, rows_per_s: float = 0.0) -> dict:
    return {
        "rps": rps,
        "rows_per_s": rows_per_s or rps,
        "p50_ms": 1.0,
        "resource_exhausted": refused,
        "server_cpu_ms_per_request": cpu_ms,
    }


def _runs(hub_rps: list[float], hub_refused: list[int]) -> dict:
    hub = {
        "digits_1": [_run(1000, 0.5)] * 3,
        "digits_16": [_run(1000, 0.5)] * 3,
        "digits_64": [_run(r, 0.5, refused) for r, refused in zip(hub_rps, hub_refused)],
        "ocr_cls_16": [_run(90, 3.0)] * 3,
    }
    kserve = {w: [_run(1000, 1.0)] * 3 for w in hub}
    return {"hub_threads": hub, "kserve": kserve}


def test_spread_is_the_median_and_range_of_the_ratios():
    assert peers.spread([1.0, 3.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "each": [1.0, 3.0, 2.0]}
    assert peers.spread([None, 2.0])["median"] == 2.0
    assert peers.spread([None])["median"] is None


def test_hub_targets_need_every_repetition_at_1_5x_kserve_and_no_refusals():
    # the OCR floor is the hub's own batch sizes run in-process (wall and CPU per row)
    floor = {
        "ocr_cls_batched": [{"rows_per_s": 50.0}] * 3,
        "ocr_cls_at_hub_threads_batches": [{"rows_per_s": 100.0, "cpu_ms_per_row": 2.7}] * 3,
    }
    good = _runs([1600, 1700, 1800], [0, 0, 0])
    targets = peers.cloud_targets(good, peers.cloud_ratios(good, floor, 3), 3)
    assert all(t["met"] for t in targets.values()), targets
    one_slow = _runs([1600, 1400, 1800], [0, 1, 0])  # one repetition at 1.4x, one refusal
    targets = peers.cloud_targets(one_slow, peers.cloud_ratios(one_slow, floor, 3), 3)
    assert not targets["hub_threads digits_64_throughput_ge_1.5x_kserve_every_rep"]["met"]
    assert not targets["hub_threads 0_resource_exhausted_at_64"]["met"]
    assert targets["hub_threads cpu_per_request_le_kserve"]["met"]  # 0.5 ms vs 1.0 ms
    assert targets["hub_threads ocr_cls_batched_ge_0.8x_floor"]["median"] == 0.9  # 90 / 100 rows/s
    assert abs(targets["hub_threads ocr_cls_batched_ge_0.8x_floor_by_cpu"]["median"] - 0.9) < 1e-9  # 2.7 / 3.0 ms
    costly = {**floor, "ocr_cls_at_hub_threads_batches": [{"rows_per_s": 100.0, "cpu_ms_per_row": 1.5}] * 3}
    targets = peers.cloud_targets(good, peers.cloud_ratios(good, costly, 3), 3)
    assert not targets["hub_threads ocr_cls_batched_ge_0.8x_floor_by_cpu"]["met"]  # the hub spends 2x the runtime

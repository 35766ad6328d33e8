"""Task drift signals and edge/cloud agreement end to end for a detector: the compiler writes the reference of boxes per
image and box scores (FP32 on validation data), a real agent serves the compiled detector over
ZeroMQ and its telemetry window bins the same signals, every window goes through the wire codec,
and the hub's DriftEngine evaluates them. Unchanged images: no task-signal alert. Images with
many more objects (a camera moved to a crowded scene): "task:boxes" opens within a few windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import yolo_data, yolo_detector
from tandem.cloud_hub.inference import InferenceServer
from tandem.cloud_hub.telemetry.alerts import Hysteresis
from tandem.cloud_hub.telemetry.engine import DriftConfig, DriftEngine
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.telemetry.window import ModelInfo, WindowAggregator, WindowConfig
from tandem.protocols.drift import TASK_SIGNAL_EDGES
from tandem.protocols.telemetry_codec import decode_window, encode_window
from tandem.tasks import TaskSpec, row_agreement, task_confidence

from compile_fixtures import ORT_FP32, compile_for_profile

WINDOW_S = 10.0
PER_WINDOW = 64  # images per window, in requests of 8
NULL_WINDOWS = 12
SHIFT_WINDOWS = 8
CONFIG = DriftConfig(
    span_s=60.0,
    baseline_s=600.0,
    bucket_s=WINDOW_S,
    min_samples=200,
    min_requests=50,
    distribution=Hysteresis(open_above=0.25, close_below=0.10, k_open=2, k_close=2),
)


def crowded(n: int, seed: int) -> np.ndarray:
    """The detector's scene with 5-7 squares per image instead of 1-3 (and sides 4-8)."""
    return yolo_data(n, seed, objects=(5, 7), sides=(4, 8))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("task-drift")
    return tmp, compile_for_profile(tmp, ORT_FP32, yolo_detector(tmp / "m.onnx"), yolo_data(400, 3))


def test_task_signals_names_match_the_wire_edges():
    spec = TaskSpec("detection", output="y", layout="channels_first")
    out = np.zeros((2, 6, 64), np.float32)
    out[:, 4, :3] = 0.9
    found = task_confidence(spec, out)
    assert set(found.signals) <= set(TASK_SIGNAL_EDGES)
    ctc = task_confidence(
        TaskSpec("ctc", output="y", blank=0, step_scores="probabilities"), np.full((3, 5, 4), 0.25, np.float32)
    )
    assert set(ctc.signals) == {"sequence_length", "sequence_probability"} <= set(TASK_SIGNAL_EDGES)


def test_detector_box_signals_reference_telemetry_and_drift(detector):
    tmp, result = detector
    manifest = result.manifest
    tasks = manifest.drift_reference["tasks"]
    assert set(tasks) == {"boxes", "box_score"}
    assert sum(tasks["boxes"]["counts"]) == 400  # one count per validation image
    assert tasks["boxes"]["edges"] == TASK_SIGNAL_EDGES["boxes"]

    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": result.out,
            "model.variant": "onnxruntime-fp32",
            "server.endpoint": f"ipc://{tmp}/a.sock",
            "hard_examples.data_dir": tmp / "data",
        }
    )
    engine = DriftEngine(lambda name, version: manifest, CONFIG)
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        window = WindowAggregator(
            "dev-det",
            ModelInfo.from_manifest(manifest, "onnxruntime-fp32"),
            profile="ort-fp32",
            config=WindowConfig(window_s=WINDOW_S),
            now=0.0,
        )
        agent.observer.telemetry = window  # the real request path feeds a real window (no broker needed here)

        def run(windows: int, start: int, shifted: bool) -> list[int]:
            opened = []
            for i in range(start, start + windows):
                x = crowded(PER_WINDOW, 100 + i) if shifted else yolo_data(PER_WINDOW, 100 + i)
                for j in range(0, PER_WINDOW, 8):
                    client.infer(x[j : j + 8])
                w = window.close((i + 1) * WINDOW_S)
                assert w is not None and {t.signal for t in w.task_signals} == {"boxes", "box_score"}
                w.sequence = i + 1
                engine.add(decode_window(encode_window(w), "dev-det"), (i + 1) * WINDOW_S - 1)
                ev = engine.evaluate((i + 1) * WINDOW_S)
                opened += [i for c in ev.changes if c.signal == "task:boxes" and c.transition == "opened"]
                rows = {r["signal"]: r for r in ev.status}
                assert "task:boxes" in rows and "task:box_score" in rows
            return opened

        assert run(NULL_WINDOWS, 0, shifted=False) == []
        opened = run(SHIFT_WINDOWS, NULL_WINDOWS, shifted=True)
    assert opened, "a crowded scene (5-7 objects per image) did not open a task:boxes drift alert"
    assert opened[0] - NULL_WINDOWS < 6, opened


def test_row_agreement_by_task_falls_with_the_answer():
    spec = TaskSpec("detection", output="y", layout="nms")
    hub = np.array([[[0, 0, 10, 10, 0.9, 1], [20, 20, 30, 30, 0.8, 0]]], np.float32)
    assert row_agreement(spec, hub, hub).tolist() == [1.0]
    one_lost = hub.copy()
    one_lost[0, 1, 4] = 0.0  # the edge misses one of two boxes: F1 = 2 * 1 / (2 + 1)
    assert np.isclose(row_agreement(spec, one_lost, hub)[0], 2 / 3)
    ctc = TaskSpec("ctc", output="y", blank=0, step_scores="probabilities")
    steps = np.eye(4, dtype=np.float32)[[1, 0, 2, 0, 3]][None]  # "1 2 3"
    edit = np.eye(4, dtype=np.float32)[[1, 0, 2, 0, 2]][None]  # "1 2 2": one edit in three
    assert np.isclose(row_agreement(ctc, edit, steps)[0], 2 / 3)
    assert row_agreement(TaskSpec("custom", output="y"), hub, hub) is None


def test_answers_from_the_hub_are_compared_with_the_edge_by_the_task(detector):
    tmp, result = detector
    manifest = result.manifest
    hub = InferenceServer(result.out, hub_profile="ort-fp32")
    hub.start()
    try:
        cfg = AgentConfig.from_keys(
            {
                "trust.allow_unsigned": True,
                "model.dir": result.out,
                "model.variant": "onnxruntime-fp32",
                "server.endpoint": f"ipc://{tmp}/b.sock",
                "hard_examples.data_dir": tmp / "data-b",
                "fallback.hub_url": hub.address,
                "fallback.hub_model": manifest.name,
            }
        )
        with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
            window = WindowAggregator("dev-det", ModelInfo.from_manifest(manifest), config=WindowConfig(), now=0.0)
            agent.observer.telemetry = window
            x = yolo_data(24, 7)
            sources = [client.infer(x[j : j + 4], mode="cloud").source for j in range(0, 24, 4)]
            w = window.close(1.0)
    finally:
        hub.stop()
    assert sources == ["cloud"] * 6
    assert w is not None and sum(w.agreement_counts) == 24  # one figure per row the hub answered
    assert w.agreement_counts[-1] == 24 and w.agreement_sum == pytest.approx(24.0)  # the same model: F1 = 1
    assert decode_window(encode_window(_numbered(w)), "dev-det").agreement_sum == pytest.approx(24.0)


def _numbered(w):
    w.sequence = 1
    return w

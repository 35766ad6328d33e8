"""Static shape buckets for LiteRT (`tandem-compile --shapes`): the real PP-OCRv4 recognizer (CTC,
dynamic width, from the rapidocr-onnxruntime wheel) compiled into one .tflite per width bucket and
served by a real agent: widths 160 and 480 run on their own bucket, a width between buckets is padded
(with 0, PP-OCR's own pad) to the next one and its sequence trimmed back, a wider line is refused
naming the buckets. The pure bucket logic (tandem.tasks.shapes) is checked beside it.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from make_data import make_rec_data
from compile_fixtures import compile_for_profile, profile_text
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.errors import BadRequestError, ShapeNotServedError
from tandem.edge_agent.ota.selftest import run_selftest
from tandem.model_compiler.errors import CompileError, VariantSkipped
from tandem.model_compiler.variants.litert import bucket_shapes
from tandem.protocols.manifest import load_manifest
from tandem.tasks import TaskSpec, ctc_greedy
from tandem.tasks.shapes import Bucket, BucketedSession, ShapeError, parse_shapes, pick_bucket, trim

WIDTHS = (160, 320, 480)  # --val is at 320: a 160/480-only variant fails the gate (padding 320 -> 480 moves text)
PROFILE_TEXT = profile_text(
    "litert-fp32",
    [{"runtime": "litert"}],
    ["fp32"],
    description="test profile, LiteRT FP32 only (static shapes)",
    cpu_features=(),
    static_shapes=True,
    device_class="npu",
    memory_budget_mb=256,
    model_size_budget_mb=40,
    latency_slo_ms=50,
    power_watts={"idle": 1, "active": 2},
)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, ocr_rec_model):
    tmp = tmp_path_factory.mktemp("buckets")
    x = make_rec_data(20, seed=5, width=320)
    shapes = parse_shapes(["x=" + ",".join(f"1x3x48x{w}" for w in WIDTHS)])
    return tmp, compile_for_profile(
        tmp, PROFILE_TEXT, ocr_rec_model, x[:6], x[6:], task=TaskSpec("ctc"), shapes=shapes
    ).out


@pytest.mark.slow
def test_ocr_rec_buckets_served_exact_padded_and_refused(compiled, ocr_rec_model):
    tmp, out = compiled
    manifest = load_manifest(out)
    variant = manifest.variant("litert-fp32")
    buckets = variant.options["buckets"]
    assert [b["inputs"]["x"] for b in buckets] == [[1, 3, 48, w] for w in WIDTHS]
    assert {b["file"] for b in buckets} == {f.path for f in variant.files}  # every bucket file is hashed
    assert variant.inputs[0].shape == [-1, 3, 48, -1]  # the width varies by bucket, the height never
    assert [f["gate"] for f in variant.metrics["buckets"]] == ["pass"] * 3
    assert run_selftest(out, manifest, variant).samples > 0  # OTA's self-test opens every bucket too

    reference = ort.InferenceSession(str(ocr_rec_model), providers=["CPUExecutionProvider"])
    lines = {w: make_rec_data(2, seed=w, width=w) for w in (160, 200, 480)}
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": out,
            "model.profile": "litert-fp32",
            "server.endpoint": f"ipc://{tmp}/agent.sock",
            "hard_examples.data_dir": tmp / "data",
            "mode.default": "edge-only",
        }
    )
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        answers = {w: client.infer({"x": x}, return_outputs=True) for w, x in lines.items()}
        with pytest.raises(ShapeNotServedError, match="1x3x48x480") as refused:
            client.infer({"x": make_rec_data(1, seed=1, width=520)})
        assert "1x3x48x520" in str(refused.value)
        with pytest.raises(BadRequestError, match=r"expects \[N, 3, 48, N\]"):
            client.infer({"x": np.zeros((1, 3, 32, 160), np.float32)})  # only the width is padded, not the height
    for w, x in lines.items():
        got = next(iter(answers[w].outputs.values()))
        if w == 200:  # padded with 0 to the 320 bucket, the sequence trimmed to ceil(200 * 40 / 320) steps
            want = reference.run(None, {"x": np.pad(x, ((0, 0), (0, 0), (0, 0), (0, 120)))})[0][:, :25]
        else:
            want = reference.run(None, {"x": x})[0]
        assert got.shape == want.shape, w
        np.testing.assert_allclose(got, want, atol=2e-3)
        spec = TaskSpec("ctc")
        assert ctc_greedy(spec, got) == ctc_greedy(spec, want)


def test_bucket_choice_padding_and_trim_are_the_tasks_rules():
    buckets = [Bucket({"x": (1, 3, 48, w)}) for w in (160, 320, 480)]
    axes = {"x": (3,)}
    assert pick_bucket(buckets, {"x": (4, 3, 48, 480)}, 0.0, axes) == (2, False)  # exact, any batch
    assert pick_bucket(buckets, {"x": (1, 3, 48, 161)}, 0.0, axes) == (1, True)  # the smallest that fits
    with pytest.raises(ShapeError, match="does not allow padding"):
        pick_bucket(buckets, {"x": (1, 3, 48, 161)}, None, axes)  # a task without padding: exact only
    with pytest.raises(ShapeError, match="1x3x48x160; x 1x3x48x320; x 1x3x48x480"):
        pick_bucket(buckets, {"x": (1, 3, 48, 481)}, 0.0, axes)
    seq = np.arange(40 * 2).reshape(1, 40, 2)
    assert trim(seq, {1: 3}, (1, 3, 48, 200), (1, 3, 48, 320)).shape == (1, 25, 2)
    assert parse_shapes(["x=1x3x48x160,1x3x48x320", "y=1x4,1x8"]) == {
        "x": [(1, 3, 48, 160), (1, 3, 48, 320)],
        "y": [(1, 4), (1, 8)],
    }
    for bad, why in (("x=1x3xAx4", "not DxDxD"), ("x", "expected NAME="), ("x=1x0", ">= 1")):
        with pytest.raises(ShapeError, match=why):
            parse_shapes([bad])
    with pytest.raises(ShapeError, match="same number of shapes"):
        parse_shapes(["x=1x4,1x8", "y=1x4"])

    class Fake:  # a runtime session that echoes its input's width as a [N, W/8, 2] sequence
        runtime = "fake"

        def __init__(self, w):
            self.w = w
            self.inputs = [Spec("x", (-1, 3, 48, w))]
            self.outputs = [Spec("y", (-1, w // 8, 2))]

        def run(self, feeds):
            assert feeds["x"].shape[3] == self.w
            return [np.ones((len(feeds["x"]), self.w // 8, 2), np.float32)]

        def close(self):
            pass

    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Spec:
        name: str
        shape: tuple

    session = BucketedSession([Fake(w) for w in (160, 320, 480)], buckets, TaskSpec("ctc", output="y"), {"x": [2, 3]})
    assert session.inputs[0].shape == (-1, 3, 48, -1) and session.outputs[0].shape == (-1, -1, 2)
    assert session.run({"x": np.zeros((2, 3, 48, 100), np.float32)})[0].shape == (2, 13, 2)  # 160 bucket, trimmed


def _dynamic_model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "W"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return onnx.load(path)


def test_without_shapes_the_calibration_width_is_the_bucket_or_the_reason_names_shapes(tmp_path):
    model = _dynamic_model(tmp_path / "m.onnx")
    assert bucket_shapes(model, {"x": np.zeros((5, 4, 96), np.float32)}, None) == [{"x": [1, 4, 96]}]
    with pytest.raises(VariantSkipped, match="--shapes x=1x4xD"):
        bucket_shapes(model, {}, None)
    assert bucket_shapes(model, {}, {"x": [(1, 4, 8), (1, 4, 16)]}) == [{"x": [1, 4, 8]}, {"x": [1, 4, 16]}]
    with pytest.raises(CompileError, match="a bucket may fix only its dynamic"):
        bucket_shapes(model, {}, {"x": [(1, 5, 8)]})
    with pytest.raises(CompileError, match="'z'|z is not an input"):
        bucket_shapes(model, {}, {"z": [(1, 4, 8)]})

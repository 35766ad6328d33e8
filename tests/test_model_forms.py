"""ONNX model forms real users bring, beyond the plain FP32 export: weights in an external data file, a model
already quantized, a model that is FP16 natively. Each compiles into variants that give what ONNX Runtime gives on
the model as given (the agent serves them), or is refused with a message that names what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compile_fixtures import ORT_CPU, ORT_FP32, compile_for_profile, profile_text
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.errors import CalibrationDataError, CompileError, InvalidModelError, VariantSkipped
from tandem.model_compiler.model_io import io_specs, load_model
from tandem.model_compiler.validate import check_declared_io

IN, HIDDEN, OUT = 16, 32, 5

# ONNX Runtime INT8 and FP16 beside FP32: the recipes an already-quantized or FP16 model must not break.
ORT_ALL = profile_text(
    "ort-all",
    [ORT_CPU],
    ["int8", "fp16", "fp32"],
    description="test profile, ONNX Runtime INT8, FP16 and FP32",
    cpu_features=("avx2", "fma", "f16c"),
)

# LiteRT first, ONNX Runtime FP32 behind it: what a profile chooses when the LiteRT variant is refused.
LITERT_ORT = profile_text(
    "litert-ort",
    [{"runtime": "litert"}, ORT_CPU],
    ["fp32"],
    description="test profile, LiteRT then ONNX Runtime, FP32",
)


def _mlp(elem: int = TensorProto.FLOAT, seed: int = 0) -> onnx.ModelProto:
    """MatMul-Add-Relu-MatMul-Softmax over a dynamic batch, weights of the given float type."""
    dtype = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array((rng.normal(size=(IN, HIDDEN)) * 0.3).astype(dtype), "w1"),
        numpy_helper.from_array((rng.normal(size=HIDDEN) * 0.1).astype(dtype), "b1"),
        numpy_helper.from_array((rng.normal(size=(HIDDEN, OUT)) * 0.3).astype(dtype), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", elem, ["batch", IN])],
        [helper.make_tensor_value_info("y", elem, ["batch", OUT])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _rows(n: int, seed: int = 1, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, IN)).astype(dtype)


def _served(tmp: Path, model_dir: Path, variant: str, x: np.ndarray) -> np.ndarray:
    """What the agent answers for `x` with `variant` of the compiled `model_dir`."""
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": model_dir,
            "model.variant": variant,
            "server.endpoint": f"ipc://{tmp}/agent.sock",
            "hard_examples.data_dir": tmp / "data",
            "policy.threshold": 0.0,
        }
    )
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        return client.infer({"x": x}, return_outputs=True).outputs["y"]


def _direct(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _external(folder: Path) -> Path:
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    onnx.save_model(_mlp(), str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def test_a_missing_external_data_file_is_named_with_its_tensors(tmp_path):
    path = _external(tmp_path / "m")
    (tmp_path / "m" / "weights.bin").unlink()
    with pytest.raises(InvalidModelError) as err:
        load_model(path)
    message = str(err.value)
    assert "in 'weights.bin' (tensors 'w1', 'b1', 'w2')" in message, message
    assert "not an ONNX model" not in message  # it is one; a file beside it is missing


def test_a_model_with_external_weights_compiles_into_a_self_contained_variant(tmp_path):
    path = _external(tmp_path / "m")
    result = compile_for_profile(tmp_path, ORT_FP32, path, _rows(32), progress=lambda message: None)
    (variant,) = result.manifest.variants
    assert [Path(f.path).name for f in variant.files] == ["onnxruntime-fp32.onnx"]
    built = onnx.load(str(result.out / variant.files[0].path), load_external_data=False)
    assert not any(init.data_location == TensorProto.EXTERNAL for init in built.graph.initializer)
    x = _rows(6, seed=2)
    got = _served(tmp_path, result.out, variant.id, x)
    np.testing.assert_allclose(got, _direct(path, x), rtol=1e-5, atol=1e-6)


def _qdq(tmp: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    float_model = tmp / "float.onnx"
    onnx.save(_mlp(), str(float_model))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"x": row[None]} for row in _rows(16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    path = tmp / "qdq.onnx"
    quantize_static(str(float_model), str(path), Reader(), quant_format=QuantFormat.QDQ)
    return path


def test_an_already_quantized_model_is_not_quantized_again(tmp_path):
    path = _qdq(tmp_path)
    result = compile_for_profile(tmp_path, ORT_ALL, path, _rows(64), progress=lambda message: None)
    assert any("already quantized (DequantizeLinear, QuantizeLinear)" in note for note in result.notes)
    skipped = {o.recipe.id: o.skipped for o in result.outcomes if o.skipped}
    int8 = [rid for rid in skipped if "int8" in rid]
    assert int8 and all("INT8 would quantize it a second time" in skipped[rid] for rid in int8), skipped
    assert "ONNX Runtime's FP16 conversion cannot retype" in skipped["onnxruntime-fp16"]
    chosen = result.manifest.profiles["ort-all"].chosen
    assert chosen == "onnxruntime-fp32"
    x = _rows(6, seed=3)
    np.testing.assert_allclose(_served(tmp_path, result.out, chosen, x), _direct(path, x), rtol=1e-5, atol=1e-6)


def test_a_native_fp16_model_is_its_own_fp16_variant(tmp_path):
    path = tmp_path / "fp16.onnx"
    onnx.save(_mlp(TensorProto.FLOAT16), str(path))
    result = compile_for_profile(tmp_path, ORT_ALL, path, _rows(64, dtype=np.float16), progress=lambda message: None)
    fp16 = next(o for o in result.outcomes if o.recipe.id == "onnxruntime-fp16")
    assert fp16.skipped is None and fp16.built is not None, fp16.skipped
    assert fp16.metrics["task_gate"] == "pass"
    x = _rows(6, seed=4, dtype=np.float16)
    got = _served(tmp_path, result.out, "onnxruntime-fp16", x)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, _direct(path, x))


def _unbatched(path: Path) -> Path:
    """The MLP as an exporter writes it without a batch axis: x [16] -> y [5] (MatMul of a vector)."""
    model = _mlp()
    for value in (model.graph.input[0], model.graph.output[0]):
        del value.type.tensor_type.shape.dim[0]
    onnx.save(model, str(path))
    return path


def test_data_for_an_input_without_a_batch_axis_must_hold_whole_inputs(tmp_path):
    path = _unbatched(tmp_path / "unbatched.onnx")
    with pytest.raises(CalibrationDataError) as err:
        compile_for_profile(tmp_path, ORT_FP32, path, _rows(1).reshape(IN)[:12], progress=lambda message: None)
    message = str(err.value)  # was ONNX Runtime's INVALID_ARGUMENT traceback out of the reference run
    assert "input 'x': 12 along axis 0, not a multiple of the model's fixed 16 there" in message, message
    assert "(16,) for one, (32,) for two" in message


def test_a_variant_whose_outputs_differ_in_rank_from_the_model_is_refused_as_the_agent_would(tmp_path):
    # What a lowering that keeps a batch axis builds: y [1, 5] for the model's [5]. Chosen, the agent refused to
    # load it on the device ('has rank 2 in the model but 1 in the manifest'); the compiler now skips it.
    path = _unbatched(tmp_path / "unbatched.onnx")
    wrong = onnx.load(str(path))
    wrong.graph.node.append(helper.make_node("Unsqueeze", ["y1", "zero"], ["y"]))
    wrong.graph.node[-2].output[0] = "y1"
    wrong.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
    wrong.graph.output[0].type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
    onnx.save(wrong, str(tmp_path / "wrong.onnx"))
    session = load_session("onnxruntime", tmp_path / "wrong.onnx")
    with pytest.raises(
        VariantSkipped,
        match=re.escape(
            "output 'y' is float32 [1, 5] in the built variant but float32 [5] in the model; the agent would refuse"
        ),
    ):
        check_declared_io(session, *io_specs(onnx.load(str(path))))
    check_declared_io(load_session("onnxruntime", path), *io_specs(onnx.load(str(path))))


def test_litert_keeps_a_vector_a_vector(tmp_path):
    # MatMul of x [16] lowered to FULLY_CONNECTED without keep_num_dims gave y [1, 5] for the model's [5]: the
    # variant was chosen for the profile and then refused by the agent. Now LiteRT's y is [5] and served.
    path = _unbatched(tmp_path / "unbatched.onnx")
    result = compile_for_profile(tmp_path, LITERT_ORT, path, _rows(1).reshape(IN), progress=lambda message: None)
    chosen = result.manifest.profiles["litert-ort"].chosen
    assert chosen == "litert-fp32", {o.recipe.id: o.skipped for o in result.outcomes}
    x = _rows(1, seed=5).reshape(IN)
    np.testing.assert_allclose(_served(tmp_path, result.out, chosen, x), _direct(path, x), rtol=1e-5, atol=1e-5)


def test_an_opset_newer_than_onnx_knows_is_refused_naming_both(tmp_path):
    model = _mlp()
    newest = onnx.defs.onnx_opset_version()
    model.opset_import[0].version = newest + 2
    onnx.save(model, str(tmp_path / "future.onnx"))
    # was ONNX Runtime's 'Opset N is under development' as a RuntimeUnavailableError traceback
    with pytest.raises(InvalidModelError, match=f"imports ONNX opset {newest + 2}, newer than the highest"):
        load_model(tmp_path / "future.onnx")


def test_a_model_onnx_runtime_cannot_load_is_a_compile_error_not_a_traceback(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mystery", ["r"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", IN])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "custom.onnx"))
    with pytest.raises(CompileError, match="ONNX Runtime, the compiler's reference, cannot load .*Mystery"):
        compile_for_profile(tmp_path, ORT_FP32, tmp_path / "custom.onnx", _rows(8), progress=lambda message: None)


def test_the_golden_set_of_a_model_without_a_batch_axis_holds_whole_inputs(tmp_path):
    # x [3, 8] is one input of three rows; the golden set took the first 16 rows, which no run of the model
    # takes ('Got: 16 Expected: 3'), so the device's self-test could never pass. Now 15 rows: 5 whole inputs.
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "rows.onnx"))
    rows = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)  # ten inputs end to end
    result = compile_for_profile(tmp_path, ORT_FP32, tmp_path / "rows.onnx", rows, progress=lambda message: None)
    with np.load(result.out / "golden.npz") as golden:
        assert golden["input/x"].shape == (15, 8)
        assert golden["output/onnxruntime-fp32/0"].shape == (15, 5)


@pytest.mark.parametrize("shape", [[3, 8], [1, 8]], ids=["no-batch-axis", "fixed-batch-1"])
def test_the_device_self_test_runs_the_golden_set_in_the_chunks_the_variant_takes(tmp_path, shape):
    """The self-test fed all golden rows in one run: a [1, 8] variant always failed it ('Got: 16 Expected: 1'),
    a [3, 8] one too (15 rows), so no device could ever install them; the compiler had validated them in chunks."""
    from tandem.edge_agent.ota.selftest import run_selftest
    from tandem.protocols.manifest import load_manifest

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 5])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "rows.onnx"))
    rows = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    result = compile_for_profile(tmp_path, ORT_FP32, tmp_path / "rows.onnx", rows, progress=lambda message: None)
    manifest = load_manifest(result.out)
    assert manifest.golden is not None and manifest.golden.count > shape[0]  # more rows than one run takes
    for variant in manifest.variants:
        outcome = run_selftest(result.out, manifest, variant)
        assert outcome.max_abs_error <= manifest.golden.atol, (variant.id, outcome)

"""ONNX Runtime INT8 keeps depthwise convolutions float on x86-64 (issue 20: INT8 that pays): on the real
PP-OCR orientation classifier their int8 QLinearConv kernels ran 16-35 ms at batch 1 against 1.4 ms for
the whole FP32 model; left float, the model ran 1.6 ms. The other convs are still quantized."""

from __future__ import annotations

import onnx
from onnx import helper

from tandem.hardware_profiles import get_profile
from tandem.model_compiler.model_io import prepare_model
from tandem.model_compiler.variants import BuildContext, get_builder


def _int8(profile: str, model_path, tmp_path):
    from make_data import make_cls_data

    prepared = tmp_path / "prepared.onnx"
    model, _ = prepare_model(onnx.load(str(model_path)), prepared)
    x, _ = make_cls_data(8, seed=1)
    builder = get_builder("onnxruntime")
    recipe = next(r for r in builder.recipes(get_profile(profile)) if r.precision == "int8")
    ctx = BuildContext(model_path=prepared, calib={model.graph.input[0].name: x}, out_dir=tmp_path / profile)
    return recipe, builder.build(recipe, ctx)


def _conv_weights(path) -> dict[str, list[bool]]:
    """'depthwise'/'dense' -> per Conv, whether its weight comes from a DequantizeLinear (quantized)."""
    model = onnx.load(str(path))
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    found: dict[str, list[bool]] = {"depthwise": [], "dense": []}
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
            found["depthwise" if group > 1 else "dense"].append(node.input[1] in dequantized)
    return found


def test_x86_int8_keeps_depthwise_convs_float_and_quantizes_the_rest(ocr_cls_model, tmp_path):
    recipe, built = _int8("cpu-x86", ocr_cls_model, tmp_path)
    assert recipe.options["keep_float"] == ["depthwise Conv"]
    convs = _conv_weights(built.files[0])
    assert len(convs["depthwise"]) == 11 and not any(convs["depthwise"])
    assert len(convs["dense"]) == 42 and all(convs["dense"])
    assert any("11 depthwise Conv kept float" in n for n in built.notes)


def test_arm_int8_still_quantizes_depthwise_convs(ocr_cls_model, tmp_path):
    recipe, built = _int8("cpu-arm", ocr_cls_model, tmp_path)  # not measured slower there: left as it was
    assert "keep_float" not in recipe.options
    assert all(_conv_weights(built.files[0])["depthwise"])

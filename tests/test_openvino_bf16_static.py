"""OpenVINO bf16 and static shapes on a real model (PP-OCRv4 detection from the rapidocr-onnxruntime
wheel, at 96x96 to keep it short): `tandem-compile` builds a bf16 variant on an AMX/AVX512-BF16 host and
gates it like any other, records precision bf16 and the session option the agent's OpenVINO session
applies; a profile with `static_shapes: true` gets IRs whose inputs are static when read back, and the
manifest advertises only what the variant takes. On a host without bf16 the variant is skipped, saying why.
"""

from __future__ import annotations

import numpy as np
import pytest

from compile_fixtures import compile_for_profile, profile_text
from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.errors import VariantSkipped
from tandem.model_compiler.host import HostInfo, read_host
from tandem.model_compiler.variants import BuildContext, Recipe
from tandem.model_compiler.variants.openvino import OpenVINOBuilder, check_static
from tandem.protocols.manifest import load_manifest
from tandem.tasks import TaskSpec

SIZE = 96
PROFILE = profile_text(
    "ov-static",
    [{"runtime": "openvino", "device": "CPU"}],
    ["bf16", "fp32"],
    description="test profile, OpenVINO on CPU in bf16 and FP32 with static shapes",
    cpu_features=("avx2", "avx512_bf16", "amx_bf16"),
    static_shapes=True,
)
HAS_BF16 = read_host().has_bf16


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, ocr_det_model):
    from make_data import make_det_data

    tmp = tmp_path_factory.mktemp("ov-static")
    x = make_det_data(12, seed=7, size=SIZE)
    result = compile_for_profile(
        tmp, PROFILE, ocr_det_model, x[:4], x[4:], task=TaskSpec("dense"), confidence_calibration=False
    )
    return result, load_manifest(result.out)


def test_static_shapes_are_in_the_ir_and_the_manifest(compiled):
    result, manifest = compiled
    variant = manifest.variant("openvino-fp32-static")
    xmls = [result.out / f.path for f in variant.files if f.path.endswith(".xml")]
    assert len(xmls) == 1
    assert check_static(xmls[0]) == {"x": [1, 3, SIZE, SIZE]}  # read back: no '?' left
    assert [b["inputs"]["x"] for b in variant.options["buckets"]] == [[1, 3, SIZE, SIZE]]
    assert variant.options["static_shapes"] is True
    assert any("static input shapes" in n for n in variant.options["notes"])
    # the model takes [?,3,?,?]; the variant any batch (row by row) of SIZE x SIZE pages only (a dense
    # map is not padded unless the task says so), and the manifest says exactly that
    assert manifest.inputs[0].shape == [-1, 3, -1, -1] and variant.inputs[0].shape == [-1, 3, SIZE, SIZE]
    session = load_session("openvino", xmls[0], **variant.options["session"])
    assert session.inputs[0].shape == (1, 3, SIZE, SIZE)
    x = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    batched = session.run({"x": x})[0]  # a batch of 3 on a batch-1 IR: sample by sample
    assert batched.shape[0] == 3
    np.testing.assert_allclose(batched[1:2], session.run({"x": x[1:2]})[0], atol=1e-6)


@pytest.mark.skipif(not HAS_BF16, reason=f"this host ({read_host().summary()}) has no avx512_bf16/amx_bf16")
def test_bf16_variant_is_gated_recorded_and_applied_by_the_session(compiled):
    result, manifest = compiled
    variant = manifest.variant("openvino-bf16-static")
    assert variant.precision == "bf16"
    assert variant.options["session"] == {"inference_precision": "bf16"}
    assert variant.metrics["task_gate"] == "pass", variant.metrics
    assert variant.metrics["task_metric"] == "mask_iou"
    xml = next(result.out / f.path for f in variant.files if f.path.endswith(".xml"))
    session = load_session("openvino", xml, **variant.options["session"])
    hint = str(session._compiled.get_property("INFERENCE_PRECISION_HINT"))
    assert "bf16" in hint or "bfloat16" in hint, hint
    fp32 = manifest.variant("openvino-fp32-static")
    pinned = load_session("openvino", result.out / fp32.files[0].path, **fp32.options["session"])
    assert str(pinned._compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")


def test_bf16_is_skipped_with_a_reason_on_a_host_without_it(tmp_path, ocr_det_model):
    avx2_only = HostInfo("x86_64", frozenset({"avx2", "fma", "f16c"}))
    recipe = Recipe("openvino-bf16", "openvino", "bf16", {"inference_precision": "bf16"})
    ctx = BuildContext(model_path=ocr_det_model, calib={}, out_dir=tmp_path)
    with pytest.raises(VariantSkipped, match="bf16 needs avx512_bf16 or amx_bf16.*has neither"):
        OpenVINOBuilder(host=avx2_only).build(recipe, ctx)

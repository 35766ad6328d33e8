"""Capability probing and the agent's verified fallback chain NPU -> GPU -> CPU.

No NPU exists here. The one mock is the probe's word that an OpenVINO NPU is present
(`_probe(openvino=("CPU", "NPU"))`): the real OpenVINO then really fails to load on it,
and the chain must carry on to the CPU. Everything else is the real runtimes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent_fixtures import _specs, make_linear_softmax
from tandem.edge_agent.errors import ModelLoadError
from tandem.edge_agent.model import load_model, plan_attempts, variant_order
from tandem.hardware_profiles import get_profile, load_profile_file
from tandem.hardware_profiles.probe import (
    DeviceProbe,
    Placement,
    delegates_from_files,
    openvino_device_present,
    parse_cpu_features,
    placement_available,
    placements,
    probe_device,
)
from tandem.protocols.manifest import FileEntry, Manifest, ProfileChoice, Variant

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512_vnni avx512_bf16 amx_int8
processor\t: 1
flags\t\t: fpu sse2
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes crc32 asimddp i8mm
CPU implementer\t: 0x41
"""


def _probe(**kw) -> DeviceProbe:
    base = dict(
        isa="x86_64",
        cpu_features=("avx2",),
        onnxruntime_providers=("CPUExecutionProvider",),
        openvino_devices=("CPU",),
        litert_module="ai_edge_litert",
        litert_delegates=("xnnpack",),
    )
    base.update({k if k != "openvino" else "openvino_devices": v for k, v in kw.items()})
    return DeviceProbe(**base)


# -- pure parsing ------------------------------------------------------------------------------


def test_cpu_features_from_cpuinfo():
    assert parse_cpu_features(X86_CPUINFO, "x86_64") == (
        "x86_64",
        ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"),
    )
    isa, feats = parse_cpu_features(ARM_CPUINFO, "aarch64")
    assert isa == "arm64" and {"neon", "dotprod", "i8mm"} <= set(feats)
    assert parse_cpu_features("", "aarch64") == ("arm64", ("neon",))  # NEON is mandatory on AArch64


def test_delegate_libraries_and_openvino_devices():
    names, files = delegates_from_files(
        ["/usr/lib/libedgetpu.so.1", "/usr/lib/libc.so.6", "/usr/lib/libtensorflowlite_gpu_delegate.so"]
    )
    assert names == ("edgetpu", "gpu") and len(files) == 2
    assert openvino_device_present("GPU", ["CPU", "GPU.0"]) and not openvino_device_present("NPU", ["CPU", "GPU.0"])
    assert openvino_device_present("HETERO:NPU,CPU", ["CPU"]) and openvino_device_present("AUTO", ["CPU"])


def test_profile_placements_run_npu_then_gpu_then_cpu():
    def chain(profile):
        p = get_profile(profile)
        return [(pl.tier, pl.label) for t in p.runtimes for pl in placements(t, t.runtime)]

    assert chain("npu-intel") == [("npu", "openvino@NPU"), ("cpu", "openvino@CPU")]
    assert chain("gpu-cuda") == [
        ("gpu", "onnxruntime@TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider"),
        ("cpu", "onnxruntime@CPUExecutionProvider"),
    ]
    assert chain("npu-litert") == [("npu", "litert@npu"), ("cpu", "litert@xnnpack")]
    assert chain("cpu-x86") == [("cpu", "onnxruntime@CPUExecutionProvider"), ("cpu", "openvino@CPU")]


def test_placement_availability_says_why():
    ok, why = placement_available(Placement("openvino", "npu", {"device": "NPU"}), _probe())
    assert not ok and "no NPU device (has CPU)" in why
    ok, why = placement_available(
        Placement("onnxruntime", "gpu", {"providers": ["CUDAExecutionProvider"]}),
        _probe(onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider")),
    )
    assert ok and "CUDAExecutionProvider" in why
    missing = DeviceProbe(isa="x86_64", problems={"openvino": "ImportError: No module named 'openvino'"})
    ok, why = placement_available(Placement("openvino", "cpu", {"device": "CPU"}), missing)
    assert not ok and "No module named 'openvino'" in why
    found = _probe(litert_delegates=("xnnpack", "edgetpu"))
    ok, why = placement_available(Placement("litert", "npu", {}, ("npu",)), found)
    assert not ok and "attaches only xnnpack" in why  # found, but our LiteRT adapter cannot attach it yet


# -- thin probes ---------------------------------------------------------------------------------------


def test_probe_of_this_host_reports_what_is_installed():
    probe = probe_device()
    assert "CPUExecutionProvider" in probe.onnxruntime_providers
    assert "CPU" in probe.openvino_devices and probe.litert_module in ("ai_edge_litert", "tflite_runtime")
    json.dumps(probe.to_dict())


def test_a_missing_runtime_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    probe = probe_device(["onnxruntime"])
    assert probe.onnxruntime_providers is None and "import of onnxruntime halted" in probe.problems["onnxruntime"]
    assert probe.problems["openvino"] == "not probed"


def test_probe_entry_point_prints_json():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "tandem.hardware_profiles.probe", "--runtime", "onnxruntime"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = json.loads(out.stdout)
    assert "CPUExecutionProvider" in data["onnxruntime_providers"] and data["isa"]


# -- the agent's fallback chain ----------------------------------------------------------------------------------

NPU_PROFILE = """name: npu-mock
description: an NPU through OpenVINO, with ONNX Runtime on the CPU as the profile's fallback runtime
device_class: npu
isa: x86_64
runtimes:
  - runtime: openvino
    device: NPU
  - runtime: onnxruntime
    execution_providers: [CPUExecutionProvider]
precisions: [int8, fp32]
memory_budget_mb: 512
model_size_budget_mb: 50
latency_slo_ms: 10
relative_speed: 2.0
"""


@pytest.fixture()
def two_variant_dir(tmp_path):
    """An OpenVINO variant (chosen for npu-mock) and an ONNX Runtime one, same tiny model."""
    import onnx

    src = make_linear_softmax(tmp_path / "src" / "lin.onnx", n_in=4, n_out=3)
    out = tmp_path / "model"
    (out / "variants").mkdir(parents=True)
    inputs, outputs = _specs(onnx.load(str(src)))
    variants = []
    for vid, runtime in (("openvino-fp32", "openvino"), ("onnxruntime-fp32", "onnxruntime")):
        rel = f"variants/{vid}.onnx"  # OpenVINO reads ONNX directly
        shutil.copyfile(src, out / rel)
        data = (out / rel).read_bytes()
        variants.append(
            Variant(
                id=vid,
                runtime=runtime,
                precision="fp32",
                files=[FileEntry(rel, hashlib.sha256(data).hexdigest(), len(data))],
                inputs=inputs,
                outputs=outputs,
                profiles=["npu-mock"],
            )
        )
    manifest = Manifest(
        name="lin",
        version="1.0.0",
        created_at="2026-12-01T00:00:00Z",
        expires_at=None,
        task={"kind": "classification", "output": outputs[0].name},
        inputs=inputs,
        outputs=outputs,
        variants=variants,
        target_profiles=["npu-mock"],
        profiles={
            "npu-mock": ProfileChoice(
                chosen="openvino-fp32", reason="test", candidates=["openvino-fp32", "onnxruntime-fp32"]
            )
        },
    )
    (out / "manifest.json").write_text(manifest.to_json())
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "npu-mock.yaml").write_text(NPU_PROFILE)
    return out, load_profile_file(tmp_path / "profiles" / "npu-mock.yaml")


def test_chain_plans_every_variant_on_the_npu_before_any_on_the_cpu(two_variant_dir):
    model_dir, hw = two_variant_dir
    from tandem.protocols.manifest import load_manifest

    manifest = load_manifest(model_dir)
    steps = [(a.variant.id, a.placement.label) for a in plan_attempts(variant_order(manifest, "npu-mock"), hw)]
    assert steps == [
        ("openvino-fp32", "openvino@NPU"),
        ("openvino-fp32", "openvino@CPU"),
        ("onnxruntime-fp32", "onnxruntime@CPUExecutionProvider"),
    ]


def test_npu_that_fails_to_load_falls_back_to_the_cpu(two_variant_dir):
    model_dir, hw = two_variant_dir
    # the mock: the probe claims an NPU; the real OpenVINO cannot open one here
    model = load_model(model_dir, "npu-mock", hardware_profile=hw, probe=_probe(openvino=("CPU", "NPU")))
    try:
        sel = model.selection
        assert (sel["variant"], sel["tier"], sel["placement"]) == ("openvino-fp32", "cpu", "openvino@CPU")
        assert sel["tried"][0]["placement"] == "openvino@NPU" and sel["tried"][0]["outcome"] == "failed"
        assert "NPU" in sel["tried"][0]["reason"] and "openvino@NPU failed" in sel["reason"]
        assert model.session.run({"x": __import__("numpy").ones((1, 4), "float32")})[0].shape == (1, 3)
    finally:
        model.close()


def test_absent_npu_is_skipped_without_trying_and_a_corrupt_variant_is_an_error(two_variant_dir):
    model_dir, hw = two_variant_dir
    model = load_model(model_dir, "npu-mock", hardware_profile=hw)  # the real probe: no NPU here
    try:
        outcomes = [(t["placement"], t["outcome"]) for t in model.selection["tried"]]
        assert outcomes == [("openvino@NPU", "absent")] and model.selection["placement"] == "openvino@CPU"
    finally:
        model.close()
    with open(model_dir / "variants" / "openvino-fp32.onnx", "r+b") as fh:
        fh.seek(30)
        fh.write(b"\x00\x01")
    # Not as signed: an error naming the file, never another variant served in its place.
    with pytest.raises(ModelLoadError, match="openvino-fp32.onnx: sha256 does not match"):
        load_model(model_dir, "npu-mock", hardware_profile=hw)
    (model_dir / "variants" / "openvino-fp32.onnx").unlink()
    with pytest.raises(ModelLoadError, match="of variant 'openvino-fp32' is missing"):
        load_model(model_dir, "npu-mock", hardware_profile=hw)


def test_agent_start_finds_a_user_profile_and_records_the_choice(two_variant_dir, monkeypatch, tmp_path):
    from tandem.edge_agent import Agent, AgentConfig

    model_dir, hw = two_variant_dir
    monkeypatch.setenv("TANDEM_PROFILE_PATH", str(Path(hw.source).parent))
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": model_dir,
            "model.profile": "npu-mock",
            "server.endpoint": f"ipc://{tmp_path}/a.sock",
            "hard_examples.data_dir": tmp_path / "data",
        }
    )
    with Agent(cfg) as agent:
        assert agent.model.selection["placement"] == "openvino@CPU"
        assert agent.model.selection["tried"][0]["outcome"] == "absent"


def test_a_variant_over_the_profiles_budgets_is_never_a_fallback(two_variant_dir):
    from tandem.protocols.manifest import load_manifest

    model_dir, _ = two_variant_dir
    manifest = load_manifest(model_dir)
    manifest.profiles["npu-mock"].skipped = [
        {"variant": "onnxruntime-fp32", "reason": "quality drop 3.1 points > budget 1"}
    ]
    assert [v.id for v in variant_order(manifest, "npu-mock")] == ["openvino-fp32"]
    assert [v.id for v in variant_order(manifest, "npu-mock", "onnxruntime-fp32")] == ["onnxruntime-fp32"]  # pinned

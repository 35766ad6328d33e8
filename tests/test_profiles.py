"""Hardware profiles: the built-ins load, user profiles extend them, bad files name the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tandem.hardware_profiles import ProfileError, load_profile_file, load_profiles, resolve_profiles

REQUIRED = {"cpu-x86", "cpu-arm", "gpu-cuda", "gpu-intel", "npu-intel", "npu-litert"}


def _valid() -> dict:
    return yaml.safe_load((Path(__file__).parents[1] / "hardware_profiles/profiles/cpu-x86.yaml").read_text())


def test_builtin_profiles_cover_every_device_class():
    profiles = load_profiles()
    assert REQUIRED <= set(profiles)
    assert {p.device_class for p in profiles.values()} == {"cpu", "gpu", "npu"}
    litert = profiles["npu-litert"]
    assert litert.constraints.static_shapes and litert.runtime_names == ("litert",)
    assert profiles["cpu-x86"].allows("onnxruntime", "int8") and not profiles["cpu-x86"].allows("litert", "int8")


def test_user_profile_dir_adds_and_overrides(tmp_path):
    data = _valid() | {"name": "edge-box", "relative_speed": 0.5}
    (tmp_path / "edge-box.yaml").write_text(yaml.safe_dump(data))
    profiles = load_profiles([tmp_path])
    assert profiles["edge-box"].relative_speed == 0.5
    assert REQUIRED <= set(profiles)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"precisions": ["int4"]}, "precisions"),
        ({"device_class": "tpu"}, "device_class"),
        ({"latency_slo_ms": -3}, "latency_slo_ms"),
        ({"runtimes": [{"runtime": "tensorrt"}]}, "runtimes[0].runtime"),
        ({"memory_budget_mb": "lots"}, "memory_budget_mb"),
        ({"colour": "blue"}, "colour"),
        ({"constraints": {"max_batch": 0}}, "constraints.max_batch"),
    ],
)
def test_bad_profile_error_names_file_and_field(tmp_path, change, field):
    data = _valid() | change
    path = tmp_path / "cpu-x86.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as err:
        load_profile_file(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_missing_field_and_bad_yaml(tmp_path):
    data = _valid()
    del data["isa"]
    (tmp_path / "cpu-x86.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="isa: required field is missing"):
        load_profile_file(tmp_path / "cpu-x86.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile_file(tmp_path / "broken.yaml")


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ProfileError, match="npu-foo.*known profiles: cpu-arm"):
        resolve_profiles(["cpu-x86", "npu-foo"])


def test_cli_lists_profiles():
    out = subprocess.run(
        [sys.executable, "-m", "tandem.model_compiler.cli", "profiles"], capture_output=True, text=True, check=True
    ).stdout
    for name in REQUIRED:
        assert name in out

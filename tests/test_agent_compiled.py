"""The agent serves every variant that the real compiler writes (ONNX Runtime and OpenVINO, FP32 and INT8)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tandem.edge_agent import Agent, AgentClient, AgentConfig
from hub_fixtures import compile_digits


@pytest.fixture(scope="module")
def compiled(digits_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compiled")
    return compile_digits(digits_dir, "edge", tmp / "digits", name="digits", key=tmp / "release.pem")


@pytest.mark.slow
def test_every_compiled_variant_serves_and_agrees_with_fp32(compiled, digits_dir, tmp_path):
    manifest = json.loads((compiled / "manifest.json").read_text())
    x = np.load(digits_dir / "test.npz")["x"][:40].astype(np.float32)
    labels = {}
    for variant in (v["id"] for v in manifest["variants"]):
        cfg = AgentConfig.from_keys(
            {
                "trust.allow_unsigned": True,
                "model.dir": compiled,
                "model.variant": variant,
                "server.endpoint": f"ipc://{tmp_path}/a.sock",
                "hard_examples.data_dir": tmp_path / "data",
                "policy.threshold": 0.0,
            }
        )
        with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
            assert agent.model.variant.id == variant
            labels[variant] = np.array(client.infer(x).labels)
            assert client.infer(x[:1]).model_version == manifest["version"]
    reference = labels[manifest["profiles"]["cpu-x86"]["chosen"]]
    for variant, got in labels.items():
        assert np.mean(got == reference) >= 0.95, variant

"""The real Silero VAD 6.2.3 (the ONNX file its PyPI wheel carries) end to end as a stream:
compiled with `--bind sr=16000`, served by a real agent over ZeroMQ, fed 512-sample hops of a
synthetic signal (speech-like voiced bursts, then near-silence) with a stream id. The agent's
answers must equal ONNX Runtime running the unspecialized model step by step with sr=16000
(state continuity), and the probabilities must separate bursts from silence.

The wheel is never installed (it depends on torch): `make test-wheels` fetches it with
`pip download --no-deps` into $TANDEM_WHEEL_CACHE (~/.cache/tandem-bench/wheels, shared with
bench/_wheels.py). Without it the test skips locally and fails under TANDEM_REQUIRE_ALL=1.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dependencies import missing
from compile_fixtures import ORT_FP32, write_profile
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.model_compiler.cli import main as compile_cli
from tandem.protocols.manifest import BoundInput, load_manifest

WHEEL = "silero_vad-6.2.3-py3-none-any.whl"
MEMBER = "silero_vad/data/silero_vad.onnx"
RATE = 16000
HOP, CONTEXT = 512, 64  # Silero's 16 kHz window: 512 new samples after the previous 64


def _wheel_cache() -> Path:
    return Path(os.environ.get("TANDEM_WHEEL_CACHE", Path.home() / ".cache" / "tandem-bench" / "wheels"))


@pytest.fixture(scope="module")
def silero(tmp_path_factory) -> Path:
    wheel = _wheel_cache() / WHEEL
    if not wheel.is_file():
        pytest.skip(
            missing(
                f"the silero-vad 6.2.3 wheel at {wheel}",
                "make test-wheels; or pip download --no-deps silero-vad==6.2.3",
            )
        )
    out = tmp_path_factory.mktemp("silero")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(MEMBER, out)
    return out / MEMBER


def speech_bursts(seed: int, bursts: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(audio, is_burst per sample): `bursts` x (1 s of voiced syllables, 1 s of near-silence) at 16 kHz.
    A burst is a 140 Hz sawtooth through three formant resonances, four syllables a second."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    t = np.arange(RATE) / RATE
    parts, marks = [], []
    for _ in range(bursts):
        f0 = 140 * (1 + 0.15 * np.sin(2 * np.pi * 3 * t))
        source = (np.cumsum(f0) / RATE) % 1.0 - 0.5
        voiced = np.zeros(RATE)
        for low, high, bandwidth in ((300, 900, 90), (900, 2300, 120), (2300, 3200, 180)):
            r, theta = np.exp(-np.pi * bandwidth / RATE), 2 * np.pi * rng.uniform(low, high) / RATE
            voiced += lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], source)
        voiced *= np.abs(np.sin(4 * np.pi * t)) ** 0.5
        parts += [voiced / np.abs(voiced).max() * 0.5, np.zeros(RATE)]
        marks += [np.ones(RATE, bool), np.zeros(RATE, bool)]
    audio = np.concatenate(parts) + rng.normal(0, 0.002, 2 * bursts * RATE)
    return audio.astype(np.float32), np.concatenate(marks)


def windows(audio: np.ndarray) -> list[np.ndarray]:
    """[1, 576] windows: each 512-sample hop after the 64 samples before it (zeros at the start)."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    return [padded[s : s + CONTEXT + HOP][None] for s in range(0, len(audio) - HOP + 1, HOP)]


def test_real_silero_streams_through_the_agent_as_onnx_runtime_runs_it_stepwise(silero, tmp_path):
    calib_audio, _ = speech_bursts(seed=5, bursts=1)
    calib = np.concatenate(windows(calib_audio)[:48])
    write_profile(tmp_path, ORT_FP32)
    np.savez(tmp_path / "calib.npz", input=calib, state=np.zeros((2, len(calib), 128), np.float32))
    out = tmp_path / "out"
    code = compile_cli(
        [
            str(silero),
            "--bind",
            "sr=16000",
            "--profiles",
            "ort-fp32",
            "--profile-dir",
            str(tmp_path / "profiles"),
            "--calib",
            str(tmp_path / "calib.npz"),
            "--val",
            str(tmp_path / "calib.npz"),
            "--out",
            str(out),
            "--signing-key",
            str(tmp_path / "k.pem"),
            "--no-timing",
            "--quiet",
            "--json",
        ]
    )
    assert code == 0
    manifest = load_manifest(out)
    assert manifest.bound_inputs == [BoundInput("sr", "int64", 16000)]
    variant = manifest.variant_for_profile("ort-fp32")
    assert [s.name for s in variant.inputs] == ["input", "state"]  # sr is bound: not an input any more

    audio, is_burst = speech_bursts(seed=2)
    steps = windows(audio)
    reference = ort.InferenceSession(str(silero), providers=["CPUExecutionProvider"])
    state, expected = np.zeros((2, 1, 128), np.float32), []
    for window in steps:  # the model as published, state threaded by hand, sr fed each step
        p, state = reference.run(None, {"input": window, "state": state, "sr": np.array(RATE, np.int64)})
        expected.append(float(p[0, 0]))

    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": out,
            "model.variant": variant.id,
            "server.endpoint": f"ipc://{tmp_path}/vad.sock",
            "hard_examples.data_dir": tmp_path / "data",
        }
    )
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        got = [
            float(
                client.infer({"input": w}, stream_id="mic-1", mode="edge", return_outputs=True).outputs["output"][0, 0]
            )
            for w in steps
        ]
        assert len(agent.service.streams) == 1
    np.testing.assert_allclose(got, expected, atol=1e-5)  # the agent carried the state exactly

    probs = np.array(got)
    centre = (np.arange(len(steps)) * HOP + HOP // 2) / RATE
    burst = is_burst[np.arange(len(steps)) * HOP + HOP // 2] & (centre % 2 > 0.25)  # past each onset
    silence = ~is_burst[np.arange(len(steps)) * HOP + HOP // 2] & (centre % 2 > 1.4)  # past the hangover
    assert probs[burst].mean() > 0.5, probs[burst]
    assert probs[silence].max() < 0.05, probs[silence]

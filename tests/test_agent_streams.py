"""Stateful streams at the agent: a Silero-shaped streaming model (audio [N, 512], state [2, N, 128]
on axis 1, a 0-d sample rate; outputs a probability and `stateN`) served by a real agent over
ZeroMQ. A stream's state is fed from its previous edge run; streams do not mix; when the hub answers
(a different model under the same name), the reply is the hub's, but the stream's next state is
still the edge run's. The stream store is LRU-bounded with idle expiry.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from models import stream_data, stream_model
from tandem.cloud_hub.inference import InferenceServer
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.errors import BadRequestError, ConfigError
from tandem.edge_agent.streams import StreamStates, state_pairs

from compile_fixtures import ORT_FP32, compile_for_profile


def _compile(tmp, seed: int):
    d = tmp / f"seed{seed}"
    d.mkdir()
    model = stream_model(d / "vad.onnx", seed=seed)
    return model, compile_for_profile(d, ORT_FP32, model, stream_data(64, 1), signing_key=tmp / "k.pem").out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streams")
    return tmp, _compile(tmp, 0), _compile(tmp, 1)


def test_streams_keep_the_edge_state_and_a_fallback_never_replaces_it(compiled):
    tmp, (edge_onnx, edge_dir), (_, cloud_dir) = compiled
    edge = ort.InferenceSession(str(edge_onnx), providers=["CPUExecutionProvider"])
    chunks = [np.random.default_rng(i).normal(scale=0.3, size=(1, 512)).astype(np.float32) for i in range(6)]
    sr = np.array(16000, dtype=np.int64)

    def reference(steps):
        """The edge model threaded by hand: (probability per step)."""
        state, probs = np.zeros((2, 1, 128), np.float32), []
        for audio in steps:
            p, state = edge.run(None, {"audio": audio, "state": state, "sr": sr})
            probs.append(float(p[0, 0]))
        return probs

    hub = InferenceServer(cloud_dir, hub_profile="ort-fp32")
    hub.start()
    try:
        cfg = AgentConfig.from_keys(
            {
                "trust.allow_unsigned": True,
                "model.dir": edge_dir,
                "model.variant": "onnxruntime-fp32",
                "server.endpoint": f"ipc://{tmp}/a.sock",
                "hard_examples.data_dir": tmp / "data",
                "fallback.hub_url": hub.address,
                "fallback.hub_model": "vad",
                # only bounds a hang: the cloud step needs the hub's answer, and the default 200 ms (its
                # call also connects) is within a loaded 2-core machine's noise
                "fallback.deadline_ms": 30_000,
            }
        )
        with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:

            def step(stream, audio, mode="edge"):
                return client.infer({"audio": audio, "sr": sr}, stream_id=stream, mode=mode, return_outputs=True)

            a = [step("a", chunks[0]), step("b", chunks[3]), step("a", chunks[1]), step("b", chunks[4])]
            cloud = step("a", chunks[2], mode="cloud")  # the hub answers this one
            after = step("a", chunks[5])
            assert len(agent.service.streams) == 2
            with pytest.raises(BadRequestError, match="name every input"):
                client.infer([chunks[0], sr], stream_id="c")
    finally:
        hub.stop()
    p = lambda ans: (
        float(ans.outputs["output"][0, 0]) if "output" in ans.outputs else float(next(iter(ans.outputs.values()))[0, 0])
    )  # noqa: E731
    ref_a = reference([chunks[0], chunks[1], chunks[2], chunks[5]])
    ref_b = reference([chunks[3], chunks[4]])
    assert [p(a[0]), p(a[2])] == pytest.approx(ref_a[:2], abs=1e-5)
    assert [p(a[1]), p(a[3])] == pytest.approx(ref_b, abs=1e-5)  # stream b started from zeros, not from a
    assert cloud.source == "cloud", cloud.detail
    assert p(cloud) != pytest.approx(ref_a[2], abs=1e-4)  # another model answered
    # the next step continues from the edge run's state of the cloud-answered step, not the hub's
    assert after.source == "edge" and p(after) == pytest.approx(ref_a[3], abs=1e-5)


def test_state_pairs_lru_and_idle_expiry():
    assert state_pairs(["audio", "state", "sr"], ["output", "stateN"]) == {"state": "stateN"}
    assert state_pairs(["h", "x"], ["y", "h_out"]) == {"h": "h_out"}
    assert state_pairs(["x"], ["y"]) == {}

    class Spec:
        def __init__(self, name, shape, dtype="float32"):
            self.name, self.shape, self.dtype = name, shape, dtype

    specs = [Spec("x", [-1, 2]), Spec("h", [2, -1, 3])]
    store = StreamStates({"h": "hN"}, max_streams=2, idle_s=10.0)
    names, arrays = store.feeds("s1", ["x"], [np.ones((4, 2), np.float32)], specs, now=0.0)
    assert names == ["x", "h"] and arrays[1].shape == (2, 4, 3) and not arrays[1].any()  # zeros, batch of 4
    for sid, t in (("s1", 1.0), ("s2", 2.0), ("s3", 3.0)):
        store.keep(sid, {"hN": np.full((2, 4, 3), t, np.float32)}, now=t)
    assert len(store) == 2  # s1, least recently used, was evicted
    assert not store.feeds("s1", ["x"], [np.ones((4, 2), np.float32)], specs, now=4.0)[1][1].any()
    assert store.feeds("s3", ["x"], [np.ones((4, 2), np.float32)], specs, now=4.0)[1][1][0, 0, 0] == 3.0
    assert not store.feeds("s3", ["x"], [np.ones((4, 2), np.float32)], specs, now=13.5)[1][1].any()  # idle: expired
    assert len(store) == 0
    with pytest.raises(BadRequestError, match="keeps no state"):
        StreamStates({}).feeds("s", ["x"], [np.ones((1, 2))], specs)


def test_stream_limits_are_agent_config_keys(compiled):
    tmp, (_, edge_dir), _ = compiled
    toml = tmp / "agent.toml"
    toml.write_text(
        f'[model]\ndir = "{edge_dir}"\nvariant = "onnxruntime-fp32"\n'
        f'[server]\nendpoint = "ipc://{tmp}/limits.sock"\n'
        f'[hard_examples]\ndata_dir = "{tmp / "data2"}"\n'
        "[trust]\nallow_unsigned = true\n[streams]\nmax = 1\n"
    )
    cfg = AgentConfig.load(toml, env={"TANDEM_AGENT_STREAMS_IDLE_S": "0.25"})  # env text coerced to float
    assert (cfg.streams.max, cfg.streams.idle_s) == (1, 0.25)
    assert AgentConfig.load(None, env={"TANDEM_AGENT_MODEL_DIR": str(edge_dir)}).streams.max == 1024  # default
    sr = np.array(16000, dtype=np.int64)
    audio = np.zeros((1, 512), np.float32)
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        assert (agent.service.streams.max_streams, agent.service.streams.idle_s) == (1, 0.25)
        client.infer({"audio": audio, "sr": sr}, stream_id="a", mode="edge")
        client.infer({"audio": audio, "sr": sr}, stream_id="b", mode="edge")
        assert len(agent.service.streams) == 1  # max = 1: stream a was dropped for b
    for text, key in (("max = 0", "streams.max"), ("idle_s = -1", "streams.idle_s"), ("idle = 5", "idle")):
        toml.write_text(f'[model]\ndir = "{edge_dir}"\n[streams]\n{text}\n')
        with pytest.raises(ConfigError, match=key):
            AgentConfig.load(toml, env={}).validate()

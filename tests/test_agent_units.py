"""The agent's pure cores and small shells: policy, config, wire codec, hard-example queue, model loader."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent_fixtures import make_linear_softmax, make_model_dir
from tandem.edge_agent.config import AgentConfig
from tandem.edge_agent.errors import BadRequestError, ConfigError, ModelLoadError
from tandem.edge_agent.hard_examples import HardExampleQueue
from tandem.edge_agent.model import load_model, match_inputs
from tandem.edge_agent.policy import ConfidencePolicy, PolicyError, softmax
from tandem.edge_agent.wire import decode_request, encode_request
from tandem.protocols.manifest import TensorSpec

# -- policy -------------------------------------------------------------------------


def test_max_prob_margin_and_entropy_on_known_rows():
    p = np.array([[0.7, 0.2, 0.1], [0.34, 0.33, 0.33], [1.0, 0.0, 0.0]], np.float32)
    mp = ConfidencePolicy("max_prob", 0.6).score([p])
    np.testing.assert_allclose(mp.confidence, [0.7, 0.34, 1.0], atol=1e-6)
    assert mp.confident.tolist() == [True, False, True] and mp.labels.tolist() == [0, 0, 0]
    mg = ConfidencePolicy("margin", 0.4).score([p])
    np.testing.assert_allclose(mg.confidence, [0.5, 0.01, 1.0], atol=1e-6)
    ent = ConfidencePolicy("entropy", 0.5).score([p])
    assert ent.confidence[1] < 0.01 and ent.confidence[2] == pytest.approx(1.0, abs=1e-5)
    assert 0 < ent.confidence[0] < 1


def test_per_request_threshold_overrides_the_models():
    policy = ConfidencePolicy("max_prob", 0.5)
    p = np.array([[0.6, 0.4]], np.float32)
    assert policy.score([p]).all_confident
    assert not policy.score([p], threshold=0.7).all_confident
    with pytest.raises(PolicyError, match="between 0 and 1"):
        policy.score([p], threshold=1.5)


def test_logits_output_is_scored_through_softmax_and_named_outputs_are_selected():
    logits = np.array([[2.0, 0.5, -1.0]], np.float32)
    policy = ConfidencePolicy("max_prob", 0.5, output="logits", transform="softmax")
    scores = policy.score({"features": np.zeros((1, 8)), "logits": logits})
    assert scores.confidence[0] == pytest.approx(float(softmax(logits).max()), rel=1e-6)
    assert scores.labels.tolist() == [0]
    with pytest.raises(PolicyError, match="'logits' is not an output"):
        policy.score({"other": logits})
    custom = ConfidencePolicy("max_prob", 0.5, transform=lambda x: softmax(x * 10))
    assert custom.score([logits]).confidence[0] > scores.confidence[0]
    binary = ConfidencePolicy("max_prob", 0.9, transform="sigmoid").score([np.array([[3.0], [0.0]], np.float32)])
    np.testing.assert_allclose(binary.confidence, [1 / (1 + np.exp(-3.0)), 0.5], rtol=1e-5)
    assert binary.labels.tolist() == [1, 0]


def test_nan_outputs_are_never_confident():
    scores = ConfidencePolicy("max_prob", 0.1).score([np.array([[np.nan, np.nan]], np.float32)])
    assert not scores.all_confident


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(2, 12)), elements=st.floats(-20, 20, width=32)),
    st.sampled_from(["max_prob", "margin", "entropy"]),
)
def test_every_measure_lies_in_0_1_and_labels_are_the_argmax(logits, kind):
    policy = ConfidencePolicy(kind, 0.5, transform="softmax")
    scores = policy.score([logits])
    assert np.all(scores.confidence >= -1e-6) and np.all(scores.confidence <= 1 + 1e-6)
    np.testing.assert_array_equal(scores.labels, np.argmax(softmax(logits), axis=-1))
    assert scores.confident.tolist() == (scores.confidence >= 0.5).tolist()


# -- config --------------------------------------------------------------------------


def test_env_overrides_the_file_and_errors_name_the_key(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[model]\ndir = "models/digits"\n[fallback]\ndeadline_ms = 200\nhub_url = "h:1"\n')
    cfg = AgentConfig.load(
        path,
        env={
            "TANDEM_AGENT_FALLBACK_DEADLINE_MS": "120",
            "TANDEM_AGENT_MODEL_ALLOW_NAN": "true",
            "TANDEM_AGENT_FALLBACK_HUB_URL": "",
        },
    )
    assert cfg.fallback.deadline_ms == 120 and cfg.model.allow_nan is True and cfg.fallback.hub_url is None
    assert cfg.model.dir == tmp_path / "models" / "digits"
    for text, key in [
        ('model.dir = "x"\n[policy]\nkind = "vote"\n', "policy.kind"),
        ('model.dir = "x"\n[batch]\nmax_batch = 1.5\n', "batch.max_batch"),
        ('model.dir = "x"\n[server]\nendpoint = "http://x"\n', "server.endpoint"),
        ('model.dir = "x"\n[policy]\nthreshhold = 0.3\n', "policy.threshhold: unknown key (did you mean 'threshold'?"),
        ('model.dir = "x"\nthreshold = 0.3\n', "threshold: unknown key"),
        ('model.dir = "x"\n[health]\nhttp_port = 70000\n', "health.http_port"),
        ("[model]\nprofile = 'cpu-x86'\n", "model.dir: required"),
        ("model.dir = [\n", "not valid TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(key)):
            AgentConfig.load(path, env={})


# -- wire codec --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float16, np.int8, np.uint8, np.int64, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
    )
)
def test_request_round_trips_without_copying(array):
    frames = encode_request({"x": array}, request_id="r", threshold=0.25)
    header, arrays = decode_request([bytes(f) for f in frames])
    assert header.request_id == "r" and header.options.threshold == pytest.approx(0.25)
    np.testing.assert_array_equal(arrays[0], array)
    assert arrays[0].dtype == array.dtype and not arrays[0].flags.owndata  # a view over the frame


# -- model loader -----------------------------------------------------------------------------


@pytest.fixture()
def tiny_dir(tmp_path):
    onnx_path = make_linear_softmax(tmp_path / "src" / "lin.onnx", n_in=4, n_out=3)
    return make_model_dir(onnx_path, tmp_path / "model", name="lin")


def test_loader_checks_hashes_variants_and_io(tiny_dir):
    model = load_model(tiny_dir, "cpu-x86")
    assert model.name == "lin" and model.variant.id == "ort-fp32" and model.output_names == ["y"]
    model.close()
    with pytest.raises(ModelLoadError, match="not compiled for profile 'npu-intel'"):
        load_model(tiny_dir, "npu-intel")
    with pytest.raises(ModelLoadError, match="no variant with id 'ov-int8'"):
        load_model(tiny_dir, "cpu-x86", "ov-int8")
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    manifest["variants"][0]["inputs"][0]["name"] = "pixels"
    (tiny_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="input 'pixels' of the manifest is not in the model"):
        load_model(tiny_dir, "cpu-x86")
    with open(tiny_dir / "variants" / "ort-fp32.onnx", "r+b") as fh:
        fh.seek(40)
        fh.write(b"\x00\x01")
    with pytest.raises(ModelLoadError, match="sha256 does not match"):
        load_model(tiny_dir, "cpu-x86")
    (tiny_dir / "variants" / "ort-fp32.onnx").unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        load_model(tiny_dir, "cpu-x86")


def test_match_inputs_names_the_problem():
    specs = [TensorSpec("a", "float32", [-1, 4]), TensorSpec("b", "int64", [-1])]
    ok = match_inputs(specs, ["b", "a"], [np.zeros(2, np.int64), np.zeros((2, 4), np.float32)], allow_nan=False)
    assert list(ok) == ["b", "a"]
    with pytest.raises(BadRequestError, match="disagree on the batch size"):
        match_inputs(specs, ["a", "b"], [np.zeros((2, 4), np.float32), np.zeros(3, np.int64)], allow_nan=False)
    with pytest.raises(BadRequestError, match="sent twice"):
        match_inputs(specs, ["a", "a"], [np.zeros((2, 4), np.float32)] * 2, allow_nan=False)
    nan = np.full((1, 4), np.nan, np.float32)
    assert match_inputs(specs[:1], [""], [nan], allow_nan=True)["a"] is nan


# -- hard examples -----------------------------------------------------------------------------


def test_hard_example_queue_is_bounded_drops_oldest_and_survives_reopen(tmp_path):
    path = tmp_path / "hard.sqlite"
    q = HardExampleQueue(path, max_rows=5)
    threads = [
        threading.Thread(
            target=lambda k=k: [
                q.put(
                    {"x": np.full((1, 4), k * 10 + i, np.float32)},
                    request_id=f"{k}-{i}",
                    model="m",
                    version="1.0.0",
                    label=i,
                    confidence=0.1,
                    source="edge",
                )
                for i in range(4)
            ]
        )
        for k in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.flush()
    assert q.depth() == 5 and q.dropped() == 7
    kept = q.peek()
    assert [k.id for k in kept] == sorted(k.id for k in kept)
    q.ack([kept[0].id])
    q.close()
    q2 = HardExampleQueue(path, max_rows=5)
    try:
        assert q2.depth() == 4 and q2.dropped() == 7
        first = q2.peek(1)[0]
        assert first.inputs["x"].shape == (1, 4) and first.model == "m" and first.source == "edge"
    finally:
        q2.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=20))
def test_decoding_arbitrary_frames_raises_only_bad_request(frames):
    try:
        decode_request(frames)
    except BadRequestError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["float32", "int64", "uint8", "bool", "complex64", ""]),
            st.lists(st.integers(-2, 5), max_size=4),
        ),
        max_size=3,
    ),
    st.lists(st.binary(max_size=48), max_size=3),
)
def test_decoding_wellformed_headers_with_mismatched_frames_raises_only_bad_request(tensors, payloads):
    from tandem.protocols import local_api_pb2 as pb

    header = pb.RequestHeader(
        schema_version=1, inputs=[pb.TensorHeader(name="t", dtype=d, shape=s) for d, s in tensors]
    )
    try:
        _, arrays = decode_request([header.SerializeToString(), *payloads])
    except BadRequestError:
        return
    assert [list(a.shape) for a in arrays] == [s for _, s in tensors]


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text("abcxyz_", min_size=1, max_size=6),
        hnp.arrays(
            st.sampled_from([np.float32, np.float16, np.int64, np.uint8, np.bool_]),
            hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
        ),
        max_size=3,
    )
)
def test_hard_example_tensor_encoding_round_trips(inputs):
    from tandem.edge_agent.hard_examples import decode_tensors, encode_tensors

    back = decode_tensors(encode_tensors(inputs))
    assert list(back) == list(inputs)
    for k, v in inputs.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_a_handler_coroutine_cancelled_before_it_ran_is_closed_not_leaked():
    # The server stopping cancels answer tasks; one cancelled before its first step never awaited
    # the handler's coroutine, which Python then reports as 'never awaited' (and never runs its finally).
    import asyncio
    import gc
    import warnings

    from tandem.edge_agent.server import _close_unstarted

    async def handler_answer() -> list:
        return []

    async def answer(pending) -> list:
        return await pending

    async def main():
        pending = handler_answer()
        task = asyncio.ensure_future(answer(pending))
        task.add_done_callback(lambda done: _close_unstarted(done, pending))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # the done callbacks
        return pending

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pending = asyncio.run(main())
        assert pending.cr_frame is None  # closed
        del pending
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]

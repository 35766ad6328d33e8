"""The confidence policy on 8-bit quantized probabilities (INT8 variants' softmax outputs)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tandem.edge_agent.policy import ConfidencePolicy, quantized_sum_tolerance, softmax


def quantize_u8(p: np.ndarray) -> np.ndarray:
    """What a TFLite INT8 softmax answers, dequantized: steps of 1/256, saturating at 255/256."""
    return (np.clip(np.round(p * 256.0), 0, 255) / 256.0).astype(np.float32)


def test_a_sure_int8_answer_stays_sure_instead_of_being_softmaxed_again():
    row = np.zeros((1, 10), np.float32)
    row[0, 3] = 255 / 256  # litert-int8 on a digit it is sure of: sum 0.996
    scores = ConfidencePolicy("max_prob", 0.8).score([row])
    assert scores.labels[0] == 3 and scores.confidence[0] == 1.0 and scores.all_confident


def test_logits_in_0_1_far_from_summing_to_1_are_still_softmaxed():
    logits = np.array([[0.9, 0.6, 0.3]], np.float32)  # sum 1.8
    scores = ConfidencePolicy("max_prob", 0.5).score([logits])
    assert scores.confidence[0] == np.float32(softmax(logits).max())
    assert quantized_sum_tolerance(3) < 0.8 and quantized_sum_tolerance(1000) == 0.05


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 12)), elements=st.floats(-8, 8, width=32)))
def test_quantized_softmax_scores_close_to_the_float_one(logits):
    p = softmax(logits)
    q = quantize_u8(p)
    for kind in ("max_prob", "margin"):
        policy = ConfidencePolicy(kind, 0.5)
        exact, approx = policy.score([p]), policy.score([q])
        # within a few quantization steps of the float answer, never the flattened softmax(softmax(x))
        assert np.all(np.abs(exact.confidence - approx.confidence) <= 4 * quantized_sum_tolerance(p.shape[1]))
        top = np.take_along_axis(q, approx.labels[:, None], axis=1)[:, 0]
        assert np.all(top == q.max(axis=1))

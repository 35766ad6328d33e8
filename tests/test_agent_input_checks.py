"""match_inputs' per-request checks: what each refusal says, and what must still pass."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.edge_agent.errors import BadRequestError
from tandem.edge_agent.model import match_inputs
from tandem.protocols.manifest import TensorSpec

F16 = [TensorSpec(name="x", dtype="float16", shape=[-1, 4])]
F32 = [TensorSpec(name="x", dtype="float32", shape=[-1, 4])]


def test_large_finite_values_are_accepted():
    x = np.full((1, 4), 60000, np.float16)  # finite, near float16's limit
    assert match_inputs(F16, [""], [x], allow_nan=False)["x"] is x


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_any_non_finite_element_is_refused(bad):
    for dtype, specs in ((np.float16, F16), (np.float32, F32)):
        x = np.ones((2, 4), dtype)
        x[1, 2] = bad
        with pytest.raises(BadRequestError, match="contains NaN or infinity"):
            match_inputs(specs, [""], [x], allow_nan=False)
        assert match_inputs(specs, [""], [x], allow_nan=True)["x"] is x


def test_inf_and_minus_inf_together_are_refused():
    x = np.array([[np.inf, -np.inf, 0, 0]], np.float32)  # sum is NaN
    with pytest.raises(BadRequestError, match="NaN or infinity"):
        match_inputs(F32, [""], [x], allow_nan=False)


def test_dtype_and_shape_errors_name_what_the_model_expects():
    with pytest.raises(BadRequestError, match="dtype float64, the model expects float32"):
        match_inputs(F32, [""], [np.zeros((1, 4))], allow_nan=False)
    with pytest.raises(BadRequestError, match=r"shape \[1, 5\], the model expects \[N, 4\]"):
        match_inputs(F32, [""], [np.zeros((1, 5), np.float32)], allow_nan=False)
    with pytest.raises(BadRequestError, match="'y' is not an input of the model"):
        match_inputs(F32, ["y"], [np.zeros((1, 4), np.float32)], allow_nan=False)
    big_endian = np.zeros((1, 4), ">f4")  # named float32 too: accepted, as before
    assert match_inputs(F32, ["x"], [big_endian], allow_nan=False)["x"] is big_endian

"""The v2 REST codec reads request parameters with their JSON types (the config loader's coercion): a string
"false" is not true, a string is not a timeout, and the error names the parameter."""

from __future__ import annotations

import json

import pytest

from tandem.cloud_hub.inference.rest_codec import BINARY_OUTPUT, RestBodyError, parse_infer_body
from tandem.protocols.tensor_codec import TensorLimits

INPUT = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.5]}


def _parse(**parts: object):
    body = json.dumps({"inputs": [INPUT], **parts}).encode()
    return parse_infer_body(body, None, "m", "", TensorLimits())


def test_json_types_are_read_as_they_are():
    rest = _parse(parameters={BINARY_OUTPUT: True, "timeout": 250000}, outputs=[{"name": "y"}])
    assert rest.binary_default is True and rest.timeout_s == 0.25
    rest = _parse(outputs=[{"name": "y", "parameters": {"binary_data": False}}])
    assert rest.binary_default is False and rest.binary_outputs == {"y": False} and rest.timeout_s is None


@pytest.mark.parametrize(
    "parts,named",
    [
        ({"parameters": {BINARY_OUTPUT: "false"}}, f"parameters.{BINARY_OUTPUT}: expected true or false"),
        ({"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "'y' parameters.binary_data: expected"),
        ({"parameters": {"timeout": "100"}}, "parameters.timeout: expected a number"),
        ({"parameters": {"timeout": True}}, "parameters.timeout: expected a number"),
    ],
)
def test_a_parameter_of_the_wrong_type_is_refused_by_name(parts, named):
    with pytest.raises(RestBodyError, match=named.replace(".", r"\.")):
        _parse(**parts)

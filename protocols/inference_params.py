"""Tandem's extras on a v2 ModelInferRequest/Response: names and (de)serialisation.

The edge agent says who is asking and what it answered itself in the request's
`parameters` map; the hub says which variant answered and how long its compute
took in the response's. Any other v2 client or server simply ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from tandem.protocols import inference_pb2 as pb

# Request parameters (edge -> hub).
DEVICE_ID = "tandem.device_id"
MODEL_VERSION = "tandem.model_version"  # the edge model's version, not the cloud model's
EDGE_LABEL = "tandem.edge_label"
EDGE_CONFIDENCE = "tandem.edge_confidence"

# Response parameters (hub -> edge).
VARIANT = "tandem.variant"
COMPUTE_MS = "tandem.compute_ms"  # queue + batch + runtime time inside the hub


@dataclass(frozen=True)
class EdgeContext:
    """What the edge told the hub about a fallback request; all optional."""

    device_id: str | None = None
    model_version: str | None = None
    edge_label: int | None = None
    edge_confidence: float | None = None


def parameter_value(param: pb.InferParameter) -> Any:
    """The Python value of an InferParameter (None when unset)."""
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


def set_parameter(params: Any, key: str, value: Any) -> None:
    """Set `params[key]` (a protobuf map of InferParameter) from a Python value."""
    target = params[key]
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise TypeError(f"parameter {key!r}: {type(value).__name__} is not bool, int, float or str")


def set_edge_context(request: pb.ModelInferRequest, ctx: EdgeContext) -> None:
    """Write the edge's context into a request's parameters (None fields are left out)."""
    for key, value in (
        (DEVICE_ID, ctx.device_id),
        (MODEL_VERSION, ctx.model_version),
        (EDGE_LABEL, ctx.edge_label),
        (EDGE_CONFIDENCE, ctx.edge_confidence),
    ):
        if value is not None:
            set_parameter(request.parameters, key, float(value) if key == EDGE_CONFIDENCE else value)


def read_edge_context(params: Mapping[str, pb.InferParameter]) -> EdgeContext:
    """Read the edge's context back, tolerating missing or oddly typed values (they come from anyone)."""
    values = {k: parameter_value(v) for k, v in params.items()}

    def typed(key: str, kinds: tuple[type, ...]) -> Any:
        value = values.get(key)
        return value if isinstance(value, kinds) and not isinstance(value, bool) else None

    label = typed(EDGE_LABEL, (int,))
    confidence = typed(EDGE_CONFIDENCE, (float, int))
    return EdgeContext(
        device_id=typed(DEVICE_ID, (str,)),
        model_version=typed(MODEL_VERSION, (str,)),
        edge_label=label,
        edge_confidence=float(confidence) if confidence is not None else None,
    )


__all__ = [
    "COMPUTE_MS",
    "DEVICE_ID",
    "EDGE_CONFIDENCE",
    "EDGE_LABEL",
    "EdgeContext",
    "MODEL_VERSION",
    "VARIANT",
    "parameter_value",
    "read_edge_context",
    "set_edge_context",
    "set_parameter",
]

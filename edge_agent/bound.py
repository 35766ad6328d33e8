"""Bound inputs at the agent (`tandem-compile --bind NAME=VALUE`): the served variant was specialized
to a fixed value and no longer takes that input. A request may leave it out or send that very value
(a client written for the original model); another value is refused, never silently ignored. The hub's
model may not be specialized, so a fallback sends the bound value with the request's inputs.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tandem.edge_agent.errors import BadRequestError
from tandem.protocols.manifest import BoundInput


def bound_by_name(bound: Sequence[BoundInput]) -> dict[str, BoundInput]:
    return {b.name: b for b in bound}


def hub_feeds(bound: Sequence[BoundInput]) -> dict[str, np.ndarray]:
    """The bound values as the 0-d tensors the unspecialized model takes (added to a fallback's feeds)."""
    return {b.name: np.asarray(b.value, dtype=b.dtype) for b in bound}


def drop_bound(
    bound: Mapping[str, BoundInput], names: Sequence[str], arrays: Sequence[np.ndarray]
) -> tuple[list[str], list[np.ndarray]]:
    """The request's tensors without its bound inputs, each checked against its bound value first.

    Only named tensors can be recognised: an unnamed one is matched by position to the variant's
    inputs, which do not include the bound ones.
    """
    if not any(name in bound for name in names):
        return list(names), list(arrays)
    kept_names: list[str] = []
    kept: list[np.ndarray] = []
    for name, array in zip(names, arrays):
        spec = bound.get(name)
        if spec is None:
            kept_names.append(name)
            kept.append(array)
            continue
        why = spec.mismatch(array)
        if why is not None:
            raise BadRequestError(why)
    return kept_names, kept

"""The one interface every inference runtime adapter offers.

The compiler validates variants through it and the agent serves through it, so a
variant measured at compile time is run by exactly the same code on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np
from numpy.typing import DTypeLike


class RuntimeUnavailableError(RuntimeError):
    """The runtime is not installed here or cannot open this model file."""


@dataclass(frozen=True)
class IOSpec:
    """A runtime's view of a model input or output; -1 marks a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int, ...]


class RuntimeSession(Protocol):
    """A loaded model, ready to run. Read-only members, so an adapter may hold them in any sequence type."""

    @property
    def runtime(self) -> str: ...

    @property
    def inputs(self) -> Sequence[IOSpec]: ...

    @property
    def outputs(self) -> Sequence[IOSpec]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one (possibly batched) request; outputs in `outputs` order."""
        ...

    def close(self) -> None: ...


def numpy_dtype_name(dtype: DTypeLike) -> str:
    return np.dtype(dtype).name

"""What a variant builder is: recipes chosen per profile, then one build per recipe.

A recipe's id is stable and says what makes it different (e.g.
`onnxruntime-int8-s8s8`), so two profiles that need the same file share one build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import numpy as np

from tandem.hardware_profiles import Profile

if TYPE_CHECKING:
    from tandem.model_compiler.validate import Task


@dataclass(frozen=True)
class Recipe:
    """What to build. `options` are JSON-able and land in the manifest's variant.options."""

    id: str
    runtime: str
    precision: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        return self.id


@dataclass
class BuildContext:
    """Everything a builder may read. The FP32 model is already prepared (opset >= 13, shapes inferred)."""

    model_path: Path
    calib: dict[str, np.ndarray]
    out_dir: Path
    calibration_method: str = "minmax"  # minmax | percentile | entropy
    log: Callable[[str], None] = lambda message: None
    # --shapes buckets: input name -> static shapes (bucket k takes the k-th of each); None: none asked
    shapes: Mapping[str, list[tuple[int, ...]]] | None = None
    pad_value: float = 0.0  # what calibration data is padded with to a larger bucket
    # the task and its gate, for a builder that searches against it (ONNX Runtime's float_search)
    task: Task | None = None
    dense_threshold: float = 0.5


@dataclass
class BuiltVariant:
    """A built variant: files[0] is the file a runtime opens; all paths are inside out_dir."""

    recipe: Recipe
    files: list[Path]
    notes: list[str] = field(default_factory=list)
    session_options: dict[str, Any] = field(default_factory=dict)
    # static shape buckets, one file each (tandem.tasks.shapes.Bucket.to_dict), and per input the
    # axes a request may be padded along; empty: one file that takes the shapes it declares
    buckets: list[dict[str, Any]] = field(default_factory=list)
    pad_axes: dict[str, list[int]] = field(default_factory=dict)


class VariantBuilder(Protocol):
    runtime: str

    def recipes(self, profile: Profile) -> list[Recipe]:
        """The recipes this builder offers for `profile` (only precisions the profile lists)."""
        ...

    def build(self, recipe: Recipe, ctx: BuildContext) -> BuiltVariant:
        """Build one recipe into ctx.out_dir; raise VariantSkipped with a reason when it cannot."""
        ...

"""Self-test of a staged variant: run the manifest's golden inputs, compare with its golden outputs.

The golden file's key layout (`input/<name>`, `output/<variant_id>/<index>`) is written by
model_compiler/golden.py; the agent may not import the compiler, so the layout is read here
again with numpy. Keep the two in step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.edge_agent.ota.errors import SelfTestError, SelfTestHarnessError
from tandem.edge_agent.errors import ModelLoadError
from tandem.edge_agent.model import open_variant
from tandem.hardware_profiles.runtimes import RuntimeUnavailableError
from tandem.hardware_profiles.runtimes.chunked import batch_axis, run_chunked
from tandem.protocols.npz import NpzFormatError, read_npz
from tandem.protocols.manifest import Manifest, Variant

log = logging.getLogger(__name__)


def _input_key(name: str) -> str:
    return f"input/{name}"


def _output_key(variant_id: str, index: int) -> str:
    return f"output/{variant_id}/{index}"


@dataclass(frozen=True)
class SelfTestResult:
    samples: int
    top1_agreement: float | None
    max_abs_error: float

    def to_dict(self) -> dict[str, float | int | None]:
        return {"samples": self.samples, "top1_agreement": self.top1_agreement, "max_abs_error": self.max_abs_error}


def run_selftest(model_dir: Path, manifest: Manifest, variant: Variant) -> SelfTestResult:
    """Raise SelfTestError unless the variant reproduces its golden outputs within the manifest's tolerances."""
    golden = manifest.golden
    if golden is None:
        raise SelfTestError(f"{manifest.name} {manifest.version}: no golden set in the manifest")
    try:
        input_keys = [_input_key(spec.name) for spec in variant.inputs]
        output_keys = [_output_key(variant.id, i) for i in range(len(variant.outputs))]
        arrays = read_npz(model_dir / golden.file.path, input_keys + output_keys)  # no ast: threads self-test at once
    except NpzFormatError as exc:
        raise SelfTestError(f"{golden.file.path}: cannot read golden data for variant {variant.id!r} ({exc})") from exc
    except Exception as exc:  # not a verdict on the variant: the updater retries, then says so
        raise SelfTestHarnessError(f"{golden.file.path}: reading the golden data failed ({exc!r})") from exc
    feeds = {spec.name: arrays[key] for spec, key in zip(variant.inputs, input_keys)}
    expected = [arrays[key] for key in output_keys]
    options = dict(variant.options.get("session", {}))
    try:
        session = open_variant(model_dir, variant, options, manifest.task)  # every static shape bucket
    except (RuntimeUnavailableError, TypeError, ModelLoadError) as exc:
        raise SelfTestError(f"variant {variant.id!r}: cannot load ({exc})") from exc
    axes = {spec.name: batch_axis(spec.shape) for spec in variant.inputs}
    try:
        # in the chunks the variant takes (a fixed batch of 1, or no batch axis: [3, 8] is one input of
        # three rows), as the compiler ran them when it wrote the golden outputs
        outputs = run_chunked(session, feeds, axes)
    except Exception as exc:  # any runtime failure on golden inputs fails the test
        raise SelfTestError(f"variant {variant.id!r}: failed on golden inputs ({exc})") from exc
    finally:
        session.close()
    return compare(manifest, variant, outputs, expected)


def compare(
    manifest: Manifest, variant: Variant, outputs: list[np.ndarray], expected: list[np.ndarray]
) -> SelfTestResult:
    """Pure comparison: classification by top-1 agreement on the task output, other outputs by atol."""
    golden = manifest.golden
    assert golden is not None
    if len(outputs) != len(expected):
        raise SelfTestError(f"variant {variant.id!r}: {len(outputs)} outputs, golden has {len(expected)}")
    task_output = manifest.task.get("output")
    classification = manifest.task.get("kind") == "classification"
    agreement: float | None = None
    worst = 0.0
    for spec, got, want in zip(variant.outputs, outputs, expected):
        got = np.asarray(got)
        if got.shape != want.shape:
            raise SelfTestError(f"output {spec.name!r}: shape {list(got.shape)}, golden {list(want.shape)}")
        if got.dtype.kind == "f" and not np.isfinite(got).all():
            raise SelfTestError(f"output {spec.name!r}: NaN or infinity on golden inputs")
        if classification and spec.name == task_output and got.ndim == 2:
            agreement = float((got.argmax(axis=1) == want.argmax(axis=1)).mean())
            if agreement < golden.min_top1_agreement:
                raise SelfTestError(
                    f"output {spec.name!r}: top-1 agreement {agreement:.3f} with the golden outputs, "
                    f"below {golden.min_top1_agreement:.3f}"
                )
            continue
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
        worst = max(worst, err)
        if err > golden.atol:
            raise SelfTestError(
                f"output {spec.name!r}: max error {err:.4g} against the golden outputs, above atol {golden.atol:g}"
            )
    return SelfTestResult(samples=golden.count, top1_agreement=agreement, max_abs_error=worst)

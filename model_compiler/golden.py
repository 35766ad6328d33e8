"""Golden inputs and each variant's expected outputs, for the device's self-test after an update."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GOLDEN_FILENAME = "golden.npz"
DEFAULT_COUNT = 16


def input_key(name: str) -> str:
    return f"input/{name}"


def output_key(variant_id: str, index: int) -> str:
    return f"output/{variant_id}/{index}"


def write_golden(path: Path, inputs: dict[str, np.ndarray], outputs_by_variant: dict[str, list[np.ndarray]]) -> None:
    """One .npz: inputs under input/<name>, outputs under output/<variant>/<index>."""
    arrays = {input_key(k): v for k, v in inputs.items()}
    for vid, outs in outputs_by_variant.items():
        for i, out in enumerate(outs):
            arrays[output_key(vid, i)] = np.asarray(out)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, allow_pickle=False, **arrays)  # as np.load reads it: no object arrays


def read_golden(
    path: Path, variant_id: str, input_names: list[str], n_outputs: int
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as npz:
        inputs = {name: npz[input_key(name)] for name in input_names}
        outputs = [npz[output_key(variant_id, i)] for i in range(n_outputs)]
    return inputs, outputs

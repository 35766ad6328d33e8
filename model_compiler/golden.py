"""Golden inputs and each variant's expected outputs, for the device's self-test after an update."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tandem.protocols.npz import read_npz

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
    keys = [input_key(name) for name in input_names] + [output_key(variant_id, i) for i in range(n_outputs)]
    arrays = read_npz(path, keys)  # the agent's reader: no ast, safe beside other threads
    return {name: arrays[input_key(name)] for name in input_names}, [arrays[k] for k in keys[len(input_names) :]]

"""Train the digits edge and cloud models from scikit-learn's bundled data set.

Writes, deterministically (fixed seeds):
  edge.onnx   small MLP (64-32-10), a fixed 200 epochs on the plain training split
  cloud.onnx  an ensemble of three MLPs (64-256-128-10, different seeds) trained on the
              training split plus its one-pixel shifts, merged into one wider MLP
              (64-768-384-10, block-diagonal, logits averaged): clearly stronger than
              the edge model, still plain Gemm/Relu/Softmax for every runtime
  calib.npz, val.npz, test.npz  float32 x in [0, 1] with shape (N, 64), int64 y
Both ONNX files have one input `input` (N, 64) and one output `probabilities` (N, 10).
The test split is 30% of the data (540 digits: one sample is 0.19 points).

Usage: python examples/digits/train.py --out DIR [--force]
Run again on the same DIR, it keeps the models this same script made (fixed seeds: they would not change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

SEED = 7
CLOUD_SEEDS = (7, 8, 9)
CLOUD_HIDDEN = (256, 128)
CLOUD_EPOCHS = 120
EDGE_EPOCHS = 200
# The share of requests the digits edge model is compiled to send to the hub
# (tandem-compile --fallback-budget; its threshold is fitted on the validation split).
FALLBACK_BUDGET = 0.11
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
RECIPE_FILE = "recipe.sha256"  # written last: the folder is complete and made by this exact script
OUTPUTS = ("edge.onnx", "cloud.onnx", "calib.npz", "val.npz", "test.npz", "scores.json")


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train 50% / calib 5% / val 15% / test 30%, stratified and seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.5, random_state=SEED, stratify=y)
    x_calib, x_rest, y_calib, y_rest = train_test_split(
        x_rest, y_rest, test_size=0.9, random_state=SEED, stratify=y_rest
    )
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=2 / 3, random_state=SEED, stratify=y_rest)
    return {"train": (x_train, y_train), "calib": (x_calib, y_calib), "val": (x_val, y_val), "test": (x_test, y_test)}


def shifted(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images and their four one-pixel shifts (zero-filled): 5x the training data."""
    images = x.reshape(-1, 8, 8)
    out = [images]
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        moved = np.zeros_like(images)
        moved[:, max(0, dy) : 8 - max(0, -dy), max(0, dx) : 8 - max(0, -dx)] = images[
            :, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)
        ]
        out.append(moved)
    return np.concatenate(out).reshape(-1, x.shape[1]), np.tile(y, len(out))


def merge_mlps(members: list):
    """One MLPClassifier whose logits are the members' mean: hidden layers side by side,
    block-diagonal between them, output weights stacked and divided by the count."""
    import copy

    from scipy.linalg import block_diag

    k = len(members)
    merged = copy.deepcopy(members[0])
    layers = len(members[0].coefs_)
    coefs, intercepts = [], []
    for i in range(layers):
        w = [m.coefs_[i] for m in members]
        b = [m.intercepts_[i] for m in members]
        if i == 0:
            coefs.append(np.concatenate(w, axis=1)), intercepts.append(np.concatenate(b))
        elif i < layers - 1:
            coefs.append(block_diag(*w)), intercepts.append(np.concatenate(b))
        else:
            coefs.append(np.concatenate(w, axis=0) / k), intercepts.append(sum(b) / k)
    merged.coefs_, merged.intercepts_ = coefs, intercepts
    merged.hidden_layer_sizes = tuple(c.shape[1] for c in coefs[:-1])
    return merged


def edge_model(x_train: np.ndarray, y_train: np.ndarray):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed epoch budget, as for the cloud members
        return MLPClassifier(hidden_layer_sizes=(32,), max_iter=EDGE_EPOCHS, random_state=SEED).fit(x_train, y_train)


def cloud_model(x_train: np.ndarray, y_train: np.ndarray):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x_aug, y_aug = shifted(x_train, y_train)
    members = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed epoch budget, not convergence, bounds the time
        for seed in CLOUD_SEEDS:
            members.append(
                MLPClassifier(
                    hidden_layer_sizes=CLOUD_HIDDEN, max_iter=CLOUD_EPOCHS, alpha=1e-3, random_state=seed
                ).fit(x_aug, y_aug)
            )
    return merge_mlps(members)


def to_onnx(model, n_features: int):
    """Export a classifier with a single float32 probabilities output (no ZipMap, no label)."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    prob_name = onx.graph.output[1].name
    # Keep only the probabilities output; the label is argmax of it and brings ops
    # (ArgMax, ArrayFeatureExtractor) that some runtimes cannot lower.
    keep = [o for o in onx.graph.output if o.name == prob_name]
    del onx.graph.output[:]
    onx.graph.output.extend(keep)
    onx.graph.output[0].name = OUTPUT_NAME
    for node in onx.graph.node:
        node.output[:] = [OUTPUT_NAME if o == prob_name else o for o in node.output]
    onx = onnx.utils.Extractor(onx).extract_model([INPUT_NAME], [OUTPUT_NAME])
    onx.producer_name = "tandem-examples-digits"
    onnx.checker.check_model(onx)
    return onx


def train(out: Path) -> dict[str, float]:
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits()
    x_train, y_train = splits["train"]
    models = {
        "edge": edge_model(x_train, y_train),
        "cloud": cloud_model(x_train, y_train),
    }
    scores: dict[str, float] = {}
    x_test, y_test = splits["test"]
    for name, model in models.items():
        scores[f"{name}_test_accuracy"] = float(model.score(x_test, y_test))
        onnx.save(to_onnx(model, x_train.shape[1]), out / f"{name}.onnx")
    for split in ("calib", "val", "test"):
        x, y = splits[split]
        np.savez(out / f"{split}.npz", x=x, y=y)
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    (out / RECIPE_FILE).write_text(recipe_digest() + "\n")
    return scores


def recipe_digest() -> str:
    """sha256 of this file: the models in a folder are this script's when its recipe file says so."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def already_trained(out: Path) -> dict[str, float] | None:
    """The scores of a folder this same script already trained (fixed seeds: retraining gives the same)."""
    try:
        if (out / RECIPE_FILE).read_text().strip() != recipe_digest():
            return None
        if not all((out / name).is_file() for name in OUTPUTS):
            return None
        return dict(json.loads((out / "scores.json").read_text()))
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/digits"), help="output folder (default: out/digits)")
    parser.add_argument("--force", action="store_true", help="train again even when --out holds this recipe's models")
    args = parser.parse_args(argv)
    kept = None if args.force else already_trained(args.out)
    scores = kept if kept is not None else train(args.out)
    print(json.dumps({"out": str(args.out), **scores, "kept": kept is not None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the digits edge and cloud models from scikit-learn's bundled data set.

Writes, deterministically (fixed seeds):
  edge.onnx   small MLP (64-32-10), probabilities output only
  cloud.onnx  larger MLP (64-256-128-10), probabilities output only
  calib.npz, val.npz, test.npz  float32 x in [0, 1] with shape (N, 64), int64 y

Usage: python examples/digits/train.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SEED = 7
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train 60% / calib 10% / val 15% / test 15%, stratified and seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=SEED, stratify=y)
    x_calib, x_rest, y_calib, y_rest = train_test_split(x_rest, y_rest, test_size=0.75, random_state=SEED, stratify=y_rest)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=SEED, stratify=y_rest)
    return {"train": (x_train, y_train), "calib": (x_calib, y_calib), "val": (x_val, y_val), "test": (x_test, y_test)}


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
    from sklearn.neural_network import MLPClassifier

    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits()
    x_train, y_train = splits["train"]
    models = {
        "edge": MLPClassifier(hidden_layer_sizes=(32,), max_iter=600, random_state=SEED),
        "cloud": MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=800, alpha=1e-3, random_state=SEED),
    }
    scores: dict[str, float] = {}
    x_test, y_test = splits["test"]
    for name, model in models.items():
        model.fit(x_train, y_train)
        scores[f"{name}_test_accuracy"] = float(model.score(x_test, y_test))
        onnx.save(to_onnx(model, x_train.shape[1]), out / f"{name}.onnx")
    for split in ("calib", "val", "test"):
        x, y = splits[split]
        np.savez(out / f"{split}.npz", x=x, y=y)
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/digits"), help="output folder (default: out/digits)")
    args = parser.parse_args(argv)
    scores = train(args.out)
    print(json.dumps({"out": str(args.out), **scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small, faithful models for the task classes no installed wheel ships, built with onnx.helper
(no downloads): a single-sigmoid binary classifier and a YOLO-style detector, with their data.

- sigmoid: scikit-learn digits, "is the digit >= 5", logistic regression exported as
  MatMul + Add + Sigmoid with output [N, 1] (what a binary head looks like in practice).
- yolo: a detector of bright squares on 32x32 images whose head has YOLOv8's layout,
  [N, 4 + C, anchors] (cx, cy, w, h in pixels, then per-class sigmoid scores), one anchor
  per 4x4 cell; decoding it needs NMS, like the real thing.
- stream: a stateful streaming model shaped like Silero VAD (state batched on axis 1, a 0-d
  sample-rate input), for the compiler's per-input batch axes and scalar inputs.
- tokens: an int32-token text classifier (Gather embedding, mean, MatMul, Softmax): INT8
  quantizes its weights and the float activations downstream of the integer input.

Usage: python examples/tasks/models.py --out DIR  (writes <name>.onnx, <name>_calib.npz, <name>_val.npz)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

OPSET = 17


def _save(model, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def sigmoid_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1], shuffled: x (1797, 64) float32, y (1797,) int64 (1 for digits >= 5)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    x = (digits.data[order] / 16.0).astype(np.float32)
    return x, (digits.target[order] >= 5).astype(np.int64)


def sigmoid_classifier(path: Path, seed: int = 0) -> Path:
    """Logistic regression on the first 1000 samples, as MatMul + Add + Sigmoid -> [N, 1]."""
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.linear_model import LogisticRegression

    x, y = sigmoid_data(seed)
    clf = LogisticRegression(max_iter=2000).fit(x[:1000], y[:1000])
    w = numpy_helper.from_array(clf.coef_.T.astype(np.float32), "W")
    b = numpy_helper.from_array(clf.intercept_.astype(np.float32), "B")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["z0"]),
        helper.make_node("Add", ["z0", "B"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
    ]
    graph = helper.make_graph(
        nodes,
        "binary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 1])],
        initializer=[w, b],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


YOLO_SIZE, YOLO_STRIDE = 32, 4


def yolo_data(n: int, seed: int, *, objects: tuple[int, int] = (1, 3), sides: tuple[int, int] = (4, 10)) -> np.ndarray:
    """n images [n, 1, 32, 32]: 1-3 bright squares (side 4-10) on a dark, noisy background.

    `objects` and `sides` (inclusive ranges) change the scene, e.g. a crowded one for drift tests."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.15, size=(n, 1, YOLO_SIZE, YOLO_SIZE)).astype(np.float32)
    for img in x:
        for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
            side = int(rng.integers(sides[0], sides[1] + 1))
            top, left = (int(v) for v in rng.integers(0, YOLO_SIZE - side, size=2))
            img[0, top : top + side, left : left + side] = rng.uniform(0.7, 1.0)
    return x


def yolo_detector(path: Path) -> Path:
    """Bright-square detector with a YOLOv8-layout head [N, 6, 64]: per 4x4 cell, a box around
    the cell (size from local brightness) and two class scores (filled cell; cell on an edge)."""
    from onnx import TensorProto, helper, numpy_helper

    cells = YOLO_SIZE // YOLO_STRIDE
    grid = np.zeros((1, 2, cells, cells), np.float32)
    centers = np.arange(cells, dtype=np.float32) * YOLO_STRIDE + YOLO_STRIDE / 2
    grid[0, 0] = centers[None, :]
    grid[0, 1] = centers[:, None]
    # features per cell: mean and max brightness; boxes: offsets + sizes; scores: two sigmoids
    box_w = np.array([[1.0, -0.5], [-0.5, 1.0], [2.0, 6.0], [6.0, 2.0]], np.float32).reshape(4, 2, 1, 1)
    box_b = np.array([0.0, 0.0, 2.0, 2.0], np.float32)
    cls_w = np.array([[12.0, 0.0], [-10.0, 10.0]], np.float32).reshape(2, 2, 1, 1)
    cls_b = np.array([-6.0, -3.0], np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in (
            (grid, "grid"),
            (box_w, "box_w"),
            (box_b, "box_b"),
            (cls_w, "cls_w"),
            (cls_b, "cls_b"),
            (np.array([0, 4 + 2, -1], np.int64), "shape"),
            (np.zeros((1, 2, cells, cells), np.float32), "zeros2"),
        )
    ]
    nodes = [
        helper.make_node("AveragePool", ["x"], ["mean"], kernel_shape=[YOLO_STRIDE] * 2, strides=[YOLO_STRIDE] * 2),
        helper.make_node("MaxPool", ["x"], ["peak"], kernel_shape=[YOLO_STRIDE] * 2, strides=[YOLO_STRIDE] * 2),
        helper.make_node("Concat", ["mean", "peak"], ["feat"], axis=1),
        helper.make_node("Conv", ["feat", "box_w", "box_b"], ["box_raw"]),
        helper.make_node("Concat", ["grid", "zeros2"], ["grid4"], axis=1),  # cell centres added to cx, cy
        helper.make_node("Add", ["box_raw", "grid4"], ["boxes"]),
        helper.make_node("Conv", ["feat", "cls_w", "cls_b"], ["cls_raw"]),
        helper.make_node("Sigmoid", ["cls_raw"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["head"], axis=1),
        helper.make_node("Reshape", ["head", "shape"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo_squares",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, YOLO_SIZE, YOLO_SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["n", 6, cells * cells])],
        initializer=inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


TOKENS, VOCAB = 16, 2000


def token_data(n: int, seed: int) -> np.ndarray:
    """n sequences of int32 token ids [n, 16]; each class draws its tokens from its own quarter of the vocabulary
    (with noise), so the classifier below has something real to tell apart."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, size=n)
    ids = rng.integers(0, VOCAB // 4, size=(n, TOKENS)) + (cls[:, None] * (VOCAB // 4))
    noise = rng.random((n, TOKENS)) < 0.3
    ids[noise] = rng.integers(0, VOCAB, size=int(noise.sum()))
    return ids.astype(np.int32)


def token_classifier(path: Path, seed: int = 0) -> Path:
    """int32 token ids [N, 16] -> Gather(embedding 2000x64) -> mean -> MatMul -> Softmax [N, 4]:
    the shape of a small text classifier whose input is not float."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    emb = rng.normal(scale=0.5, size=(VOCAB, 64)).astype(np.float32)
    emb[:, :4] += np.repeat(np.eye(4, dtype=np.float32), VOCAB // 4, axis=0) * 2.0  # a class signal per quarter
    w = (rng.normal(scale=0.1, size=(64, 4)) + np.pad(np.eye(4), ((0, 60), (0, 0))) * 3.0).astype(np.float32)
    inits = [
        numpy_helper.from_array(emb, "emb"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.zeros(4, np.float32), "B"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["vec"], axis=0),
        helper.make_node("ReduceMean", ["vec"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["z0"]),
        helper.make_node("Add", ["z0", "B"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["n", TOKENS])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 4])],
        initializer=inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def stream_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs of the streaming model: audio [n, 512], state [2, n, 128] (batched on axis 1), sr a 0-d scalar."""
    rng = np.random.default_rng(seed)
    return {
        "audio": rng.normal(scale=0.3, size=(n, 512)).astype(np.float32),
        "state": rng.normal(scale=0.5, size=(2, n, 128)).astype(np.float32),
        "sr": np.array(16000, dtype=np.int64),
    }


def stream_model(path: Path, seed: int = 0) -> Path:
    """A stateful streaming detector shaped like Silero VAD: audio [N, 512], state [2, N, 128]
    batched on axis 1, a 0-d sample-rate scalar; outputs a speech probability [N, 1] and the
    next state [2, N, 128]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {
        "Wa": rng.normal(scale=0.05, size=(512, 128)),
        "Wh": rng.normal(scale=0.05, size=(128, 128)),
        "Wo": rng.normal(scale=0.3, size=(128, 1)),
        "half": np.array(0.5),
        "sr_scale": np.array(1e-5),
    }
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    inits += [
        numpy_helper.from_array(np.array(0, np.int64), "i0"),
        numpy_helper.from_array(np.array(1, np.int64), "i1"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
    ]
    nodes = [
        helper.make_node("MatMul", ["audio", "Wa"], ["a"]),
        helper.make_node("Gather", ["state", "i0"], ["h"], axis=0),
        helper.make_node("Gather", ["state", "i1"], ["c"], axis=0),
        helper.make_node("MatMul", ["h", "Wh"], ["hh"]),
        helper.make_node("Add", ["a", "hh"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h2"]),
        helper.make_node("Add", ["c", "h2"], ["c_sum"]),
        helper.make_node("Mul", ["c_sum", "half"], ["c2"]),
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sr_f", "sr_scale"], ["bias"]),
        helper.make_node("MatMul", ["h2", "Wo"], ["logit0"]),
        helper.make_node("Add", ["logit0", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
        helper.make_node("Unsqueeze", ["h2", "ax0"], ["h2u"]),
        helper.make_node("Unsqueeze", ["c2", "ax0"], ["c2u"]),
        helper.make_node("Concat", ["h2u", "c2u"], ["stateN"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "stream",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["n", 512]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "n", 128]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["n", 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "n", 128]),
        ],
        initializer=inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def write_all(out: Path) -> dict[str, Path]:
    """Both models and their calibration and validation data under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    x, _ = sigmoid_data()
    sigmoid_classifier(out / "sigmoid.onnx")
    np.savez(out / "sigmoid_calib.npz", x=x[1000:1200])
    np.savez(out / "sigmoid_val.npz", x=x[1200:1600])
    yolo_detector(out / "yolo.onnx")
    np.savez(out / "yolo_calib.npz", x=yolo_data(64, 1))
    np.savez(out / "yolo_val.npz", x=yolo_data(96, 2))
    token_classifier(out / "tokens.onnx")
    np.savez(out / "tokens_calib.npz", x=token_data(64, 3))
    np.savez(out / "tokens_val.npz", x=token_data(128, 4))
    stream_model(out / "stream.onnx")
    np.savez(out / "stream_calib.npz", **stream_data(64, 5))
    np.savez(out / "stream_val.npz", **stream_data(96, 6))
    return {
        "sigmoid": out / "sigmoid.onnx",
        "yolo": out / "yolo.onnx",
        "tokens": out / "tokens.onnx",
        "stream": out / "stream.onnx",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for name, path in write_all(args.out).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LitServe serving an ONNX model on onnxruntime behind /predict (JSON), for bench/peers.py.

Runs in build/litserve-venv: `python litserve_onnx.py MODEL.onnx PORT`. One worker, no batching
(as a single-image edge endpoint is usually written).
"""

from __future__ import annotations

import sys

import litserve as ls
import numpy as np
import onnxruntime as ort


class OnnxAPI(ls.LitAPI):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def setup(self, device: str) -> None:
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def decode_request(self, request: dict) -> np.ndarray:
        return np.asarray(request["x"], dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]

    def encode_response(self, output: np.ndarray) -> dict:
        return {"y": output.tolist()}


if __name__ == "__main__":
    path, port = sys.argv[1], int(sys.argv[2])
    server = ls.LitServer(OnnxAPI(path), accelerator="cpu", workers_per_device=1)
    server.run(port=port, generate_client_file=False)

"""KServe's ModelServer serving ONNX models over v2 (gRPC and REST), for bench/peers.py.

Runs in build/kserve-venv (`make kserve-venv`; kserve pins protobuf<7):
`python kserve_onnx.py GRPC_PORT HTTP_PORT NAME=MODEL.onnx ...`. Each model runs on onnxruntime
with its default session options, one request at a time (KServe does not batch).
"""

from __future__ import annotations

import sys

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.ready = True

    def predict(self, payload: InferRequest, headers: dict | None = None, response_headers: dict | None = None):
        feeds = {t.name: t.as_numpy() for t in payload.inputs}
        answers = []
        for name, value in zip(self.names, self.session.run(self.names, feeds)):
            out = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
            out.set_data_from_numpy(np.ascontiguousarray(value, dtype=np.float32), binary_data=True)
            answers.append(out)
        return InferResponse(model_name=self.name, infer_outputs=answers, response_id=payload.id)


def main(argv: list[str]) -> None:
    grpc_port, http_port, *models = argv
    served = [OnnxModel(*spec.split("=", 1)) for spec in models]
    kserve.ModelServer(grpc_port=int(grpc_port), http_port=int(http_port), workers=1).start(served)


if __name__ == "__main__":
    main(sys.argv[1:])

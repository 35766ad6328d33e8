"""KServe's own ModelServer serving one ONNX model over the v2 protocol, for tests/test_fallback_kserve.py.

Runs in the kserve virtualenv (`make kserve-venv`: kserve pins protobuf<7, which this project's
environment is past), not in the project's: `build/kserve-venv/bin/python tests/kserve_v2_server.py
MODEL.onnx NAME GRPC_PORT HTTP_PORT`. The model runs on onnxruntime; what KServe answers to a request
its predict() cannot take (INTERNAL) is KServe's own behaviour, untouched.
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
        self.path = path
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict | None = None, response_headers: dict | None = None):
        assert self.session is not None
        feeds = {t.name: t.as_numpy() for t in payload.inputs}
        names = [o.name for o in self.session.get_outputs()]
        outputs = self.session.run(names, feeds)  # a wrong shape or dtype raises here
        answers = []
        for name, value in zip(names, outputs):
            value = np.ascontiguousarray(value)
            out = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
            out.set_data_from_numpy(value.astype(np.float32), binary_data=True)
            answers.append(out)
        return InferResponse(model_name=self.name, infer_outputs=answers, response_id=payload.id)


def main(argv: list[str]) -> None:
    path, name, grpc_port, http_port = argv
    model = OnnxModel(name, path)
    model.load()
    kserve.ModelServer(grpc_port=int(grpc_port), http_port=int(http_port), workers=1).start([model])


if __name__ == "__main__":
    main(sys.argv[1:])

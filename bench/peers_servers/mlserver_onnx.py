"""An MLServer custom runtime running an ONNX model on onnxruntime, for bench/peers.py.

MLServer ships no ONNX runtime of its own; this is the smallest MLModel that serves one
(`implementation: mlserver_onnx.OnnxModel`, `parameters.uri`: the .onnx file), one request
at a time. Runs in build/mlserver-venv, which bench/peers.py makes.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        outputs = self.session.run(self.names, feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, np.ascontiguousarray(value, dtype=np.float32))
                for name, value in zip(self.names, outputs)
            ],
        )

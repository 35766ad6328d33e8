"""A minimal FastAPI endpoint running an ONNX model on onnxruntime (/predict, JSON), for bench/peers.py.

`python fastapi_onnx.py MODEL.onnx PORT` with the project's environment (FastAPI and uvicorn are
hub dependencies). The model runs in the async handler: for a tiny model that is the cheapest
way FastAPI offers (no thread-pool hand-off).
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
app = FastAPI()


@app.post("/predict")
async def predict(body: dict) -> dict:
    x = np.asarray(body["x"], dtype=np.float32)
    return {"y": session.run(None, {input_name: x})[0].tolist()}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)

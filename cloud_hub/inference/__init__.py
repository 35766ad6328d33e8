"""The hub's inference endpoint: KServe v2 / Open Inference Protocol over gRPC.

`tandem-hub serve` builds an `InferenceServer` from its model directories and runs it
next to the REST console in one process: `start()` returns the bound port, `stop()`
drains and frees the models.
"""

from tandem.cloud_hub.inference.model import CloudModel, ModelDirError, load_cloud_model
from tandem.cloud_hub.inference.server import InferenceServer, serve_forever
from tandem.cloud_hub.inference.servicer import InferenceServicer, InferenceStats

__all__ = [
    "CloudModel",
    "InferenceServer",
    "InferenceServicer",
    "InferenceStats",
    "ModelDirError",
    "load_cloud_model",
    "serve_forever",
]

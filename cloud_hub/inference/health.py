"""grpc.health.v1 (Check and Watch, per model) and server reflection beside the v2 service.

Kubernetes gRPC probes and grpc_health_probe ask service "" (the server);
`inference.GRPCInferenceService` and each served model name (and alias) are their
own services, so a probe can watch one model. Reflection lists all three services
(grpcurl, Postman); its descriptors come from our private pool (protocols/generate.py)
with the health and reflection files added to it.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from tandem.protocols import inference_pb2 as pb

log = logging.getLogger(__name__)

INFERENCE_SERVICE = "inference.GRPCInferenceService"


def add_health_and_reflection(server: grpc.Server, servicer: Any) -> Any:
    """Register health (every name SERVING) and reflection on `server`; returns the HealthServicer, or None
    when grpcio-health-checking is not installed (the v2 service runs without it)."""
    try:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    except ImportError:
        log.warning("grpcio-health-checking is not installed: grpc.health.v1 answers UNIMPLEMENTED")
        return None
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ["", INFERENCE_SERVICE, *servicer.models, *servicer.aliases]:
        checker.set(name, serving)
    add_reflection(server, with_health=True)
    return checker


def add_reflection(server: Any, with_health: bool) -> None:
    """Server reflection (threaded or grpc.aio server) listing the v2 service, health and reflection."""
    try:
        from grpc_reflection.v1alpha import reflection, reflection_pb2
    except ImportError:
        log.warning("grpcio-reflection is not installed: server reflection is off")
        return
    names = [INFERENCE_SERVICE]
    pool = pb.DESCRIPTOR.pool
    modules: list[Any] = [reflection_pb2]
    if with_health:
        from grpc_health.v1 import health, health_pb2

        names.append(health.SERVICE_NAME)
        modules.append(health_pb2)
    for module in modules:
        _add_file(pool, module.DESCRIPTOR)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server, pool=pool)


def _add_file(pool: Any, file_descriptor: Any) -> None:
    """Add a generated file to `pool` once (a second InferenceServer in the process finds it there)."""
    try:
        pool.FindFileByName(file_descriptor.name)
    except KeyError:
        pool.AddSerializedFile(file_descriptor.serialized_pb)

"""The hub's KServe v2 GRPCInferenceService: decode, validate, batch, run, encode.

Every failure maps to one gRPC status a v2 client understands: unknown model
NOT_FOUND, malformed request INVALID_ARGUMENT (the message names the tensor),
full queue RESOURCE_EXHAUSTED, deadline passed DEADLINE_EXCEEDED. The edge's extras
(device, edge answer and confidence) are read from `parameters`, logged and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Mapping

import grpc
import numpy as np

from tandem.cloud_hub.inference.model import BadInputError, CloudModel
from tandem.hardware_profiles.runtimes.batching import BatcherClosedError, QueueFullError
from tandem.protocols import inference_params as params
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.protocols.tensor_codec import (DEFAULT_LIMITS, TensorCodecError, TensorLimits, datatype_of,
                                    decode_request_inputs, encode_response_outputs)

log = logging.getLogger(__name__)

SERVER_NAME = "tandem-hub"
_MAX_TRACKED_DEVICES = 10_000


class RpcFailure(Exception):
    """An RPC answer other than OK: a status code and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class InferenceStats:
    """Counters since start; `snapshot()` copies them for the console and metrics."""

    requests: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)  # by status code name
    fallback_requests: int = 0  # requests that carried an edge device id
    edge_agreements: int = 0
    edge_disagreements: int = 0
    by_device: Counter = field(default_factory=Counter)
    compute_ms_total: float = 0.0

    def to_dict(self, top_devices: int = 20) -> dict:
        """JSON-able summary for the REST console (the busiest devices only)."""
        return {
            "requests": self.requests, "ok": self.ok, "errors": dict(self.errors),
            "fallback_requests": self.fallback_requests, "edge_agreements": self.edge_agreements,
            "edge_disagreements": self.edge_disagreements,
            "mean_compute_ms": self.compute_ms_total / self.ok if self.ok else None,
            "top_devices": dict(self.by_device.most_common(top_devices)),
        }


def _version() -> str:
    try:
        return metadata.version("tandem")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves `models` by manifest name; `aliases` map other names (e.g. the edge's) onto them."""

    def __init__(self, models: Mapping[str, CloudModel], aliases: Mapping[str, str] | None = None, *,
                 limits: TensorLimits = DEFAULT_LIMITS, allow_non_finite: bool = False,
                 max_request_s: float = 30.0) -> None:
        self.models = dict(models)
        self.aliases = dict(aliases or {})
        for alias, target in self.aliases.items():
            if target not in self.models:
                raise ValueError(f"alias {alias!r} -> {target!r}: no such model (serving: {', '.join(self.models)})")
        self.limits = limits
        self.allow_non_finite = allow_non_finite
        self.max_request_s = max_request_s  # cap for callers that set no deadline
        self.ready = True
        self._lock = threading.Lock()
        self._stats = InferenceStats()
        self._version = _version()

    # -- health and metadata ----------------------------------------------------------

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready and bool(self.models))

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        try:
            self.resolve(request.name, request.version)
        except RpcFailure:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    def ServerMetadata(self, request: pb.ServerMetadataRequest,
                       context: grpc.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    def ModelMetadata(self, request: pb.ModelMetadataRequest,
                      context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        try:
            model = self.resolve(request.name, request.version)
        except RpcFailure as failure:
            context.abort(failure.code, failure.message)
        response = pb.ModelMetadataResponse(name=model.name, versions=[model.version], platform=model.platform)
        for specs, target in ((model.inputs, response.inputs), (model.outputs, response.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=datatype_of(spec.dtype), shape=list(spec.shape))
        return response

    # -- inference --------------------------------------------------------------------------

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        with self._lock:
            self._stats.requests += 1
        try:
            response = self.infer(request, context.time_remaining(), on_submit=lambda f: context.add_callback(f.cancel))
        except RpcFailure as failure:
            with self._lock:
                self._stats.errors[failure.code.name] += 1
            log.debug("ModelInfer model=%s id=%s -> %s: %s", request.model_name, request.id,
                      failure.code.name, failure.message)
            context.abort(failure.code, failure.message)
        with self._lock:
            self._stats.ok += 1
        return response

    def infer(self, request: pb.ModelInferRequest, timeout_s: float | None = None, *,
              on_submit: Callable[[Future], object] | None = None) -> pb.ModelInferResponse:
        """Answer one request, or raise RpcFailure; the core of ModelInfer without the gRPC context.

        `on_submit` sees the batcher's future (ModelInfer cancels it when the caller goes
        away, so a queued request of a vanished client never runs).
        """
        start = time.perf_counter()
        model = self.resolve(request.model_name, request.model_version)
        try:
            tensors = decode_request_inputs(request, self.limits)
            feeds = model.check_inputs(tensors, allow_non_finite=self.allow_non_finite)
        except (TensorCodecError, BadInputError) as exc:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        wanted = [o.name for o in request.outputs] or model.output_names
        unknown = sorted(set(wanted) - set(model.output_names))
        if unknown:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                             f"model {model.name!r} has no output(s) {', '.join(unknown)} "
                             f"(outputs: {', '.join(model.output_names)})")
        for out in request.outputs:
            if "classification" in out.parameters:  # Triton's top-k extension: not offered here
                raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"output {out.name!r}: the classification (top-k) extension is not supported; "
                                 "request the raw output and take the top-k client-side")
        edge = params.read_edge_context(request.parameters)
        try:
            future = model.batcher.submit(feeds)
        except QueueFullError as exc:
            raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, f"hub is overloaded: {exc}; retry later") from None
        except BatcherClosedError:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "hub is shutting down") from None
        if on_submit is not None:
            on_submit(future)
        wait_s = self.max_request_s if timeout_s is None else min(max(timeout_s, 0.0), self.max_request_s)
        try:
            outputs = future.result(timeout=wait_s)
        except FutureTimeout:
            future.cancel()
            raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"model {model.name!r} did not answer within {wait_s * 1000:.0f} ms") from None
        except CancelledError:
            raise RpcFailure(grpc.StatusCode.CANCELLED, "the caller went away") from None
        except BatcherClosedError:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "hub is shutting down") from None
        except Exception as exc:  # the runtime failed on inputs that passed validation
            log.exception("model=%s variant=%s failed on a validated request", model.name, model.variant.id)
            raise RpcFailure(grpc.StatusCode.INTERNAL, f"model {model.name!r} failed: {exc}") from None
        compute_ms = (time.perf_counter() - start) * 1000.0
        by_name = dict(zip(model.output_names, outputs))
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        try:
            encode_response_outputs(response, {name: by_name[name] for name in wanted}, limits=self.limits)
        except TensorCodecError as exc:
            raise RpcFailure(grpc.StatusCode.INTERNAL, f"model {model.name!r} answer cannot be encoded: {exc}") from None
        params.set_parameter(response.parameters, params.VARIANT, model.variant.id)
        params.set_parameter(response.parameters, params.COMPUTE_MS, compute_ms)
        self._count_edge(model, edge, outputs, compute_ms)
        return response

    def resolve(self, name: str, version: str = "") -> CloudModel:
        """The model for a requested name (or alias) and optional version; RpcFailure if none."""
        if not name:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "model name is empty")
        model = self.models.get(self.aliases.get(name, name))
        if model is None:
            served = sorted(set(self.models) | set(self.aliases))
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served here (models: {', '.join(served)})")
        if version and version != model.version:
            raise RpcFailure(grpc.StatusCode.NOT_FOUND,
                             f"model {model.name!r} version {version!r} is not served (serving {model.version})")
        return model

    def _count_edge(self, model: CloudModel, edge: params.EdgeContext, outputs: list[np.ndarray],
                    compute_ms: float) -> None:
        agree: bool | None = None
        first = outputs[0] if outputs else None
        if edge.edge_label is not None and first is not None and first.ndim == 2 and first.shape[0] == 1:
            agree = int(np.argmax(first[0])) == edge.edge_label
        with self._lock:
            s = self._stats
            s.compute_ms_total += compute_ms
            if edge.device_id is not None:
                s.fallback_requests += 1
                if edge.device_id in s.by_device or len(s.by_device) < _MAX_TRACKED_DEVICES:
                    s.by_device[edge.device_id] += 1
            if agree is not None:
                s.edge_agreements += agree
                s.edge_disagreements += not agree
        if edge.device_id is not None:
            log.debug("fallback device=%s model=%s edge_version=%s edge_label=%s edge_confidence=%s agree=%s "
                      "compute_ms=%.2f", edge.device_id, model.name, edge.model_version, edge.edge_label,
                      edge.edge_confidence, agree, compute_ms)

    def stats(self) -> InferenceStats:
        with self._lock:
            s = self._stats
            return InferenceStats(s.requests, s.ok, Counter(s.errors), s.fallback_requests, s.edge_agreements,
                                  s.edge_disagreements, Counter(s.by_device), s.compute_ms_total)

"""The hub's KServe v2 GRPCInferenceService: decode, validate, batch, run, encode.

Every failure maps to one gRPC status a v2 client understands: unknown model
NOT_FOUND, malformed request INVALID_ARGUMENT (the message names the tensor),
full queue RESOURCE_EXHAUSTED (with a `grpc-retry-pushback-ms` hint), deadline passed
DEADLINE_EXCEEDED. The edge's extras (device, edge answer and confidence) are read
from `parameters`, logged and counted. `infer` is the one core: gRPC unary, gRPC
stream and REST (cloud_hub.inference.rest) all answer through it.
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
from typing import Callable, Iterator, Mapping

import grpc
import numpy as np

from tandem.cloud_hub.inference import describe
from tandem.cloud_hub.inference.classification import ClassificationError, class_count, labels_of, top_classes
from tandem.cloud_hub.inference.counters import InferenceCounters
from tandem.cloud_hub.inference.model import BadInputError, CloudModel
from tandem.cloud_hub.inference.tracing import SpanRecorder
from tandem.cloud_hub.inference.unsupported import shared_memory_refusal
from tandem.hardware_profiles.runtimes.batching import BatcherClosedError, QueueFullError
from tandem.protocols import inference_params as params
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.protocols.tensor_codec import (
    DEFAULT_LIMITS,
    TensorCodecError,
    TensorLimits,
    decode_request_inputs,
    encode_response_outputs,
)
from tandem.tasks import TaskError, TaskSpec, task_confidence

log = logging.getLogger(__name__)

SERVER_NAME = "tandem-hub"
# The v2 extensions this server speaks (ServerMetadata.extensions, GET /v2).
EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "statistics",
    "model_configuration",
    "model_repository",
    "health",
    "metrics",
]
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"  # gRFC A6: how long a client should wait before retrying
_MAX_TRACKED_DEVICES = 10_000
_MIN_PUSHBACK_MS = 10
DEFAULT_INLINE_MAX_US = 200.0  # as the agent's [batch] inline_max_us


class RpcFailure(Exception):
    """An RPC answer other than OK: a status code, a message for the caller, and a retry hint when overloaded."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


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
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(self.errors),
            "fallback_requests": self.fallback_requests,
            "edge_agreements": self.edge_agreements,
            "edge_disagreements": self.edge_disagreements,
            "mean_compute_ms": self.compute_ms_total / self.ok if self.ok else None,
            "top_devices": dict(self.by_device.most_common(top_devices)),
        }


@dataclass
class Prepared:
    """A checked request on its way to the model: what `complete` needs to answer it."""

    request: pb.ModelInferRequest
    model: CloudModel
    feeds: dict[str, np.ndarray]
    wanted: list[str]
    edge: params.EdgeContext
    start: float
    classes: Mapping[str, int] = field(default_factory=dict)  # output -> k of Triton's classification extension


def _version() -> str:
    try:
        return metadata.version("tandem")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves `models` by manifest name; `aliases` map other names (e.g. the edge's) onto them."""

    def __init__(
        self,
        models: Mapping[str, CloudModel],
        aliases: Mapping[str, str] | None = None,
        *,
        limits: TensorLimits = DEFAULT_LIMITS,
        allow_non_finite: bool = False,
        max_request_s: float = 30.0,
        inline_max_us: float = DEFAULT_INLINE_MAX_US,
    ) -> None:
        self.models = dict(models)
        self.aliases = dict(aliases or {})
        for alias, target in self.aliases.items():
            if target not in self.models:
                raise ValueError(f"alias {alias!r} -> {target!r}: no such model (serving: {', '.join(self.models)})")
        self.limits = limits
        self.allow_non_finite = allow_non_finite
        self.max_request_s = max_request_s  # cap for callers that set no deadline
        self.inline_max_s = inline_max_us / 1e6  # models measured faster than this run without a hand-off
        self._fastest_s: dict[str, float] = {}  # per model, its fastest inline run
        self.ready = True
        self._lock = threading.Lock()
        self._stats = InferenceStats()
        self._version = _version()
        self.counters = InferenceCounters()
        self.spans = SpanRecorder()  # W3C trace context continued from the caller (cloud_hub/inference/tracing.py)

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

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return self.server_metadata()

    def server_metadata(self) -> pb.ServerMetadataResponse:
        """The server's name, version and v2 extensions (gRPC ServerMetadata and REST GET /v2 share it)."""
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=EXTENSIONS)

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            model = self.resolve(request.name, request.version)
        except RpcFailure as failure:
            context.abort(failure.code, failure.message)
            raise  # abort raises; this line only tells the type checker so
        return describe.model_metadata(model)

    def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.ServicerContext) -> pb.ModelConfigResponse:
        try:
            model = self.resolve(request.name, request.version)
        except RpcFailure as failure:
            context.abort(failure.code, failure.message)
            raise  # abort raises; this line only tells the type checker so
        return pb.ModelConfigResponse(config=describe.model_config(model))

    def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        try:
            return self.statistics(request.name, request.version)
        except RpcFailure as failure:
            context.abort(failure.code, failure.message)
            raise  # abort raises; this line only tells the type checker so

    def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return describe.repository_index(self.models.values(), self.ready)

    def statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        """ModelStatistics for one model (or all with an empty name); RpcFailure for an unknown one.

        One model's entry carries the name and version it was asked by (an alias, "2" or "2.1.0"),
        as Triton's clients look their answer up by what they sent.
        """
        response = pb.ModelStatisticsResponse()
        if name:
            model = self.resolve(name, version)
            counters = self.counters.get(model.name)
            response.model_stats.append(describe.model_statistics(model, counters, name=name, version=version))
            return response
        for model in self.models.values():
            response.model_stats.append(describe.model_statistics(model, self.counters.get(model.name)))
        return response

    # -- inference --------------------------------------------------------------------------

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        span, parent = self.spans.start(context.invocation_metadata())
        start = time.perf_counter()
        code = "OK"
        try:
            return self.answer(request, context.time_remaining(), on_submit=lambda f: context.add_callback(f.cancel))
        except RpcFailure as failure:
            code = failure.code.name
            log.debug(
                "ModelInfer model=%s id=%s -> %s: %s",
                request.model_name,
                request.id,
                failure.code.name,
                failure.message,
            )
            if failure.retry_after_ms is not None:
                context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(failure.retry_after_ms)),))
            context.abort(failure.code, failure.message)
            raise  # abort raises; this line only tells the type checker so
        finally:
            self.spans.finish(
                "inference.GRPCInferenceService/ModelInfer",
                span,
                parent,
                request.model_name,
                code,
                time.perf_counter() - start,
            )

    def ModelStreamInfer(
        self, requests: Iterator[pb.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        """One answer per request, in order; a failed request answers error_message and the stream goes on."""
        for request in requests:
            try:
                response = self.answer(request, context.time_remaining())
            except RpcFailure as failure:
                yield pb.ModelStreamInferResponse(error_message=f"{failure.code.name}: {failure.message}")
                continue
            yield pb.ModelStreamInferResponse(infer_response=response)

    def answer(
        self,
        request: pb.ModelInferRequest,
        timeout_s: float | None = None,
        *,
        on_submit: Callable[[Future], object] | None = None,
    ) -> pb.ModelInferResponse:
        """`infer` with the books kept: request, error and latency counters (every door calls this)."""
        start = time.perf_counter()
        try:
            response = self.infer(request, timeout_s, on_submit=on_submit)
        except RpcFailure as failure:
            self.note_failure(request.model_name, failure, time.perf_counter() - start)
            raise
        self.note_ok(response, time.perf_counter() - start)
        return response

    def note_failure(self, model_name: str, failure: RpcFailure, seconds: float = 0.0) -> None:
        """Count a request that failed, also before it reached `answer` (a REST body that did not parse)."""
        with self._lock:
            self._stats.requests += 1
            self._stats.errors[failure.code.name] += 1
        model = self.models.get(self.aliases.get(model_name, model_name))
        if model is not None:  # unknown names are not labels: a scanner must not grow the series without bound
            self.counters.record(model.name, seconds, error=failure.code.name)

    def infer(
        self,
        request: pb.ModelInferRequest,
        timeout_s: float | None = None,
        *,
        on_submit: Callable[[Future], object] | None = None,
    ) -> pb.ModelInferResponse:
        """Answer one request, or raise RpcFailure; the core of ModelInfer without the gRPC context.

        `on_submit` sees the batcher's future (ModelInfer cancels it when the caller goes
        away, so a queued request of a vanished client never runs).
        """
        prepared = self.prepare(request)
        if isinstance(prepared, pb.ModelInferResponse):
            return prepared
        inline = self.run_inline(prepared)
        if inline is not None:
            return self.complete(prepared, inline)
        future = self.submit(prepared)
        if on_submit is not None:
            on_submit(future)
        wait_s = self.wait_s(timeout_s)
        try:
            outputs = future.result(timeout=wait_s)
        except FutureTimeout:
            future.cancel()
            raise self.timed_out(prepared.model, wait_s) from None
        except Exception as exc:
            raise self.run_failure(prepared.model, exc) from None
        return self.complete(prepared, outputs)

    # The steps of `infer`, shared with the asynchronous server (cloud_hub/inference/aio.py), which runs
    # tiny models inline and awaits the batcher's future instead of blocking a thread on it.

    def prepare(self, request: pb.ModelInferRequest) -> "Prepared | pb.ModelInferResponse":
        """Resolve, decode and check a request (RpcFailure if it is bad); a zero-row batch is answered here."""
        start = time.perf_counter()
        model = self.resolve(request.model_name, request.model_version)
        refusal = shared_memory_refusal(request)  # before decoding: such an input carries no data to decode
        if refusal is not None:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, refusal)
        try:
            tensors = decode_request_inputs(request, self.limits)
            feeds = model.check_inputs(tensors, allow_non_finite=self.allow_non_finite)
        except (TensorCodecError, BadInputError) as exc:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        wanted = [o.name for o in request.outputs] or model.output_names
        unknown = sorted(set(wanted) - set(model.output_names))
        if unknown:
            raise RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {model.name!r} has no output(s) {', '.join(unknown)} "
                f"(outputs: {', '.join(model.output_names)})",
            )
        try:
            classes = {o.name: k for o in request.outputs if (k := class_count(o.name, o.parameters)) is not None}
        except ClassificationError as exc:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if feeds and all(a.ndim and a.shape[0] == 0 for a in feeds.values()):
            return self._empty_answer(request, model, wanted, start, classes)
        edge = params.read_edge_context(request.parameters)
        return Prepared(request, model, feeds, wanted, edge, start, classes)

    def run_inline(self, prepared: "Prepared") -> list[np.ndarray] | None:
        """Run a tiny model in the calling thread (or event loop), queue or not; None for other models.

        Only models whose measured run time is below `inline_max_s`: for them a hand-off to the
        batcher's thread and back costs more than the model (digits: ~8 us of compute). Always, not
        only while the batcher is idle: falling back under load made a tiny model flip between two
        throughput levels as calls piled into the batcher (see MicroBatcher.run_in_caller).
        """
        model = prepared.model
        batcher = model.batcher
        # the fastest run seen: a run preempted on a busy host must not make a tiny model look big
        ewma = batcher.run_ewma_s
        fastest = self._fastest_s.get(model.name)
        seen = fastest if ewma is None else ewma if fastest is None else min(fastest, ewma)
        if seen is None or seen >= self.inline_max_s:
            return None
        t0 = time.perf_counter()
        try:
            outputs = batcher.run_in_caller(prepared.feeds)
        except Exception as exc:
            raise self.run_failure(model, exc) from None
        took = time.perf_counter() - t0
        if fastest is None or took < fastest:
            self._fastest_s[model.name] = took  # a lost update between two callers only keeps a slower one
        return outputs

    def submit(self, prepared: "Prepared") -> Future:
        """Queue a prepared request on its model's batcher; RpcFailure (with a retry hint) when it is full."""
        model = prepared.model
        try:
            return model.batcher.submit(prepared.feeds)
        except QueueFullError as exc:
            pushback = _pushback_ms(model)
            raise RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"hub is overloaded: {exc}; retry in {pushback} ms",
                retry_after_ms=pushback,
            ) from None
        except BatcherClosedError:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "hub is shutting down") from None

    def wait_s(self, timeout_s: float | None) -> float:
        """How long to wait for the model: the caller's deadline, capped by max_request_s."""
        return self.max_request_s if timeout_s is None else min(max(timeout_s, 0.0), self.max_request_s)

    @staticmethod
    def timed_out(model: CloudModel, wait_s: float) -> RpcFailure:
        return RpcFailure(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"model {model.name!r} did not answer within {wait_s * 1000:.0f} ms"
        )

    @staticmethod
    def run_failure(model: CloudModel, exc: BaseException) -> RpcFailure:
        """The RpcFailure for what the batcher's future (or an inline run) raised."""
        if isinstance(exc, CancelledError):
            return RpcFailure(grpc.StatusCode.CANCELLED, "the caller went away")
        if isinstance(exc, BatcherClosedError):
            return RpcFailure(grpc.StatusCode.UNAVAILABLE, "hub is shutting down")
        # the runtime failed on inputs that passed validation
        log.error("model=%s variant=%s failed on a validated request", model.name, model.variant.id, exc_info=exc)
        return RpcFailure(grpc.StatusCode.INTERNAL, f"model {model.name!r} failed: {exc}")

    def complete(self, prepared: "Prepared", outputs: list[np.ndarray]) -> pb.ModelInferResponse:
        """Encode the model's outputs into the answer and count the edge's context."""
        model = prepared.model
        compute_ms = (time.perf_counter() - prepared.start) * 1000.0
        by_name = dict(zip(model.output_names, outputs))
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=prepared.request.id)
        answer = _classified(model, {name: by_name[name] for name in prepared.wanted}, prepared.classes)
        try:
            encode_response_outputs(response, answer, limits=self.limits)
        except TensorCodecError as exc:
            raise RpcFailure(
                grpc.StatusCode.INTERNAL, f"model {model.name!r} answer cannot be encoded: {exc}"
            ) from None
        params.set_parameter(response.parameters, params.VARIANT, model.variant.id)
        params.set_parameter(response.parameters, params.COMPUTE_MS, compute_ms)
        self._count_edge(model, prepared.edge, outputs, compute_ms)
        return response

    def note_ok(self, response: pb.ModelInferResponse, seconds: float) -> None:
        """Count an answered request (request, ok and per-model counters)."""
        with self._lock:
            self._stats.requests += 1
            self._stats.ok += 1
        rows = int(response.outputs[0].shape[0]) if response.outputs and response.outputs[0].shape else 1
        self.counters.record(response.model_name, seconds, rows=rows)

    def _empty_answer(
        self,
        request: pb.ModelInferRequest,
        model: CloudModel,
        wanted: list[str],
        start: float,
        classes: Mapping[str, int],
    ) -> pb.ModelInferResponse:
        """A zero-row batch answers zero-row outputs without running the model (check_inputs allowed it)."""
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        empty = model.empty_outputs()
        answer = _classified(model, {name: empty[name] for name in wanted}, classes)
        encode_response_outputs(response, answer, limits=self.limits)
        params.set_parameter(response.parameters, params.VARIANT, model.variant.id)
        params.set_parameter(response.parameters, params.COMPUTE_MS, (time.perf_counter() - start) * 1000.0)
        return response

    def resolve(self, name: str, version: str = "") -> CloudModel:
        """The model for a requested name (or alias) and optional version; RpcFailure if none.

        A version is the manifest's semver ("1.2.0") or, as Triton clients send, an integer:
        the served version's major ("1").
        """
        if not name:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "model name is empty")
        model = self.models.get(self.aliases.get(name, name))
        if model is None:
            served = sorted(set(self.models) | set(self.aliases))
            raise RpcFailure(
                grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served here (models: {', '.join(served)})"
            )
        if version and version not in describe.version_names(model):
            raise RpcFailure(
                grpc.StatusCode.NOT_FOUND,
                f"model {model.name!r} version {version!r} is not served "
                f"(serving {' or '.join(describe.version_names(model))})",
            )
        return model

    def _count_edge(
        self, model: CloudModel, edge: params.EdgeContext, outputs: list[np.ndarray], compute_ms: float
    ) -> None:
        agree: bool | None = None
        if edge.edge_label is not None and outputs:
            agree = edge_agrees(model, outputs, edge.edge_label)
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
            log.debug(
                "fallback device=%s model=%s edge_version=%s edge_label=%s edge_confidence=%s agree=%s compute_ms=%.2f",
                edge.device_id,
                model.name,
                edge.model_version,
                edge.edge_label,
                edge.edge_confidence,
                agree,
                compute_ms,
            )

    def queue_depths(self) -> dict[str, int]:
        """Requests waiting in each model's batcher now (for /metrics)."""
        return {name: model.batcher.queue_depth for name, model in self.models.items()}

    def stats(self) -> InferenceStats:
        with self._lock:
            s = self._stats
            return InferenceStats(
                s.requests,
                s.ok,
                Counter(s.errors),
                s.fallback_requests,
                s.edge_agreements,
                s.edge_disagreements,
                Counter(s.by_device),
                s.compute_ms_total,
            )


def _classified(model: CloudModel, outputs: dict[str, np.ndarray], classes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The outputs to answer, those asked with `classification: k` as their top k classes (BYTES)."""
    if not classes:
        return outputs
    labels = labels_of(model.manifest.task, model.output_names)
    try:
        return {
            name: top_classes(name, array, classes[name], labels.get(name)) if name in classes else array
            for name, array in outputs.items()
        }
    except ClassificationError as exc:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def _pushback_ms(model: CloudModel) -> int:
    """How long until the queue has room: a full queue's worth of batches at the measured run time."""
    run_s = getattr(model.batcher, "run_ewma_s", None) or 0.001
    batches = model.batcher.queue_depth / max(1, model.batcher.max_batch)
    return max(_MIN_PUSHBACK_MS, int(batches * run_s * 1000.0))


def edge_agrees(model: CloudModel, outputs: list[np.ndarray], edge_label: int) -> bool | None:
    """Whether the hub's answer (one row) has the edge's label, both read by the model's task
    (tandem.tasks: a class, a sigmoid's 0/1, boxes kept, a CTC sequence's length); None when
    the task has no label to compare or the answer is not one row."""
    try:
        spec = TaskSpec.from_dict(model.manifest.task)
    except TaskError:
        spec = TaskSpec("classification", scores="logits")  # a manifest task this hub cannot read: argmax, as before
    names = list(model.output_names)
    raw = outputs[names.index(spec.output)] if spec.output in names else outputs[0]
    if raw.ndim < 2 or raw.shape[0] != 1 or not spec.has_confidence:
        return None
    try:
        return int(task_confidence(spec, raw).labels[0]) == edge_label
    except (TaskError, ValueError, IndexError):
        return None

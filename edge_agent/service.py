"""One request's path through the agent: decode -> check -> batch -> policy -> (hub) -> reply.

The steps are plain methods over values; the socket lives in `server.py`, the wiring
in `agent.py`. Every failure becomes an error reply with a code and a message.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Sequence

import numpy as np

from tandem.edge_agent.bound import bound_by_name, drop_bound, hub_feeds
from tandem.edge_agent.errors import (
    AgentError,
    BadRequestError,
    FallbackUnavailable,
    InferenceError,
    NonFiniteOutputError,
    OverloadedError,
    reply_code,
)
from tandem.edge_agent.fast_lane import FastLane, TensorPlan, frame_bytes
from tandem.edge_agent.hard_examples import HardExampleQueue
from tandem.edge_agent.metrics import AgentMetrics
from tandem.edge_agent.model import LoadedModel, match_inputs
from tandem.edge_agent.modes import Action, Decision, FallbackBudget, ServingMode, decide, effective_mode
from tandem.edge_agent.observe import RequestObserver
from tandem.edge_agent.policy import ConfidencePolicy, PolicyError, Scores
from tandem.edge_agent.streams import STREAM_IDLE_S, STREAMS_MAX, StreamStates, state_pairs
from tandem.edge_agent.tracing import AgentTracer, request_context
from tandem.edge_agent.wire import decode_request, encode_reply, error_reply
from tandem.hardware_profiles.runtimes.batching import BatcherClosedError, MicroBatcher, QueueFullError
from tandem.protocols import local_api_pb2 as pb
from tandem.protocols.tracing import SpanContext

if TYPE_CHECKING:
    from tandem.edge_agent.fallback import Fallback
    from tandem.edge_agent.server import Concurrency

log = logging.getLogger(__name__)

# How long past the fallback deadline the agent waits before answering degraded anyway
# (covers thread hand-off; the fallback client enforces the deadline itself).
FALLBACK_GRACE_S = 0.05
SHADOW_MAX_INFLIGHT = 4  # shadow calls waiting on the hub at once; more are skipped, never queued


@dataclass
class _Prepared:
    header: pb.RequestHeader
    feeds: dict[str, np.ndarray]
    threshold: float | None
    span: SpanContext | None = None  # made when tracing exports or the application sent a traceparent


@dataclass
class Answer:
    source: pb.Source
    scores: Scores
    outputs: list[tuple[str, np.ndarray]]
    detail: str = ""
    edge_confidence: np.ndarray | None = None


class InferenceService:
    """Answers local-API requests for one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        batcher: MicroBatcher,
        policy: ConfidencePolicy,
        metrics: AgentMetrics,
        *,
        device_id: str,
        allow_nan: bool = False,
        fallback: Fallback | None = None,
        fallback_executor: Executor | None = None,
        deadline_ms: float = 200.0,
        hub_model: str | None = None,
        hard_examples: HardExampleQueue | None = None,
        inline_max_us: float = 0.0,
        observer: RequestObserver | None = None,
        mode: ServingMode | str = ServingMode.HYBRID,
        budget: FallbackBudget | None = None,
        shadow_sample_rate: float = 0.0,
        rng: random.Random | None = None,
        fast_lane: bool = True,
        solo_inline_max_us: float = 0.0,
        concurrency: "Concurrency | None" = None,
        streams_max: int = STREAMS_MAX,
        stream_idle_s: float = STREAM_IDLE_S,
        tracer: AgentTracer | None = None,
    ) -> None:
        """`budget` is shared by every service the agent builds (hot swaps keep what was spent)."""
        self.model = model
        self.batcher = batcher
        self.policy = policy
        # this variant's own counts (labelled with it); the newest service is the one serving
        self.metrics = metrics.for_model(model.name, model.version, model.variant.id)
        metrics.model_info = lambda: (model.name, model.version, model.variant.id)
        self.device_id = device_id
        self.tracer = tracer  # [tracing] otlp_endpoint: request and fallback spans (edge_agent/tracing.py)
        self.allow_nan = allow_nan
        self.fallback = fallback
        self.fallback_executor = fallback_executor
        self.deadline_s = deadline_ms / 1000.0
        self.hub_model = hub_model or model.name
        self.hard_examples = hard_examples
        self.observer = observer  # health-watch figures and telemetry, one call per reply
        self.pending = 0  # requests waiting on the runtime or the hub (loop thread only); drained on a swap
        # Models whose calls take less than this run on the loop thread when the batcher is
        # idle: for them the hand-off to the worker thread costs more than the model.
        self.inline_max_s = inline_max_us / 1e6
        self.solo_inline_max_s = solo_inline_max_us / 1e6
        self.concurrency = concurrency  # the server's view of overlapping requests (server.Concurrency)
        self.mode = ServingMode.parse(mode)
        self.budget = budget if budget is not None and budget.limited else None
        self._count_bytes = self.budget is not None and self.budget.bytes_per_hour is not None
        self.shadow_sample_rate = shadow_sample_rate
        self._rng = rng or random.Random()
        self._shadow_slots = threading.BoundedSemaphore(SHADOW_MAX_INFLIGHT)
        # inputs fixed at compile time (--bind): dropped from requests after a check, sent to the hub (edge_agent/bound.py)
        self.bound = bound_by_name(model.manifest.bound_inputs)
        self.bound_feeds = hub_feeds(model.manifest.bound_inputs)
        # stateful models: per-stream state, fed in and kept from the edge run only (edge_agent/streams.py)
        self.streams = StreamStates(
            state_pairs([s.name for s in model.input_specs], model.output_names, model.manifest.task.get("state")),
            max_streams=streams_max,
            idle_s=stream_idle_s,
        )
        # repeated request layouts skip the general path's parsing and checks (edge_agent/fast_lane.py)
        self.lane: FastLane | None = (
            FastLane(
                model_name=model.name,
                model_version=model.version,
                output_names=model.output_names,
                policy=policy,
                run_inline=self._run_now,
                inline_ready=self.inline_ready,
                metrics=self.metrics,
                observer=observer,
            )
            if fast_lane
            else None
        )

    def handle(self, frames: Sequence[Any]) -> list[Any] | Awaitable[list[Any]]:
        """Reply frames, at once when no waiting is needed (fast model, confident), else an awaitable.

        The synchronous path saves the event loop a task and a turn per request; see server.py.
        """
        t0 = time.perf_counter()
        edge: Answer | None = None
        try:
            ran = None
            if self.lane is not None:
                reply, ran = self.lane.answer(frames, t0)
                if reply is not None:
                    return reply
            request = self._prepare(frames)
            outputs = ran if ran is not None else self._run_inline(self.model.runtime_feeds(request.feeds))
            if outputs is not None:
                edge, decision = self._score(request, outputs)
                if decision.action is not Action.CLOUD:
                    return self._reply(
                        request, self._edge_only(request, edge, decision), t0, decision.action is Action.BUDGET_SPENT
                    )
        except Exception as exc:
            return self._failure(exc, t0)
        self.pending += 1
        return self._finish(request, t0, edge)

    async def _finish(self, request: "_Prepared", t0: float, edge: Answer | None) -> list[Any]:
        """Run on the worker unless `edge` (already scored inline, decided CLOUD), then ask the hub."""
        try:
            if edge is None:  # decide once per request: the decision spends the budget
                outputs = await self._run_worker(self.model.runtime_feeds(request.feeds))
                edge, decision = self._score(request, outputs)
                if decision.action is not Action.CLOUD:
                    return self._reply(
                        request, self._edge_only(request, edge, decision), t0, decision.action is Action.BUDGET_SPENT
                    )
            answer = await self._ask_hub(request.feeds, edge.scores, request.header.request_id, self._span(request))
            if answer.source == pb.SOURCE_CLOUD and self.observer is not None:
                self.observer.compared(
                    self.policy, edge.outputs, edge.scores.labels, answer.outputs, answer.scores.labels
                )
            if not edge.scores.all_confident:
                self._keep_hard_example(
                    request.header.request_id, request.feeds, edge.scores, _SOURCE_NAMES[answer.source]
                )
            if answer.source == pb.SOURCE_EDGE_DEGRADED:
                edge.source, edge.detail = pb.SOURCE_EDGE_DEGRADED, answer.detail
                answer = edge
            return self._reply(request, answer, t0)
        except Exception as exc:
            return self._failure(exc, t0, request.header.request_id)
        finally:
            self.pending -= 1

    def _failure(self, exc: Exception, t0: float, request_id: str = "") -> list[Any]:
        # an AgentError's request_id is "" until a decoder stamps it; other exceptions have none
        request_id = getattr(exc, "request_id", "") or request_id
        if not isinstance(exc, AgentError):  # a bug, not the client's fault: say so, keep serving
            log.error("request failed request_id=%s", request_id, exc_info=exc)
        return self._error(request_id, *reply_code(exc), t0)

    def _span(self, request: "_Prepared") -> SpanContext | None:
        if request.span is None and (self.tracer is not None or request.header.traceparent):
            request.span = request_context(request.header.traceparent)
        return request.span

    def _reply(self, request: "_Prepared", answer: Answer, t0: float, budget_spent: bool = False) -> list[Any]:
        elapsed = time.perf_counter() - t0
        self.metrics.observe_request(_SOURCE_NAMES[answer.source], elapsed)
        if self.tracer is not None:
            span = self._span(request)
            assert span is not None
            self.tracer.request(
                span,
                request.header.traceparent,
                t0,
                self.model.name,
                self.model.version,
                _SOURCE_NAMES[answer.source],
                request.header.request_id,
            )
        if self.observer is not None:
            scores = answer.scores
            self.observer.answered(
                _SOURCE_NAMES[answer.source],
                elapsed,
                scores.confidence,
                scores.labels,
                request.feeds,
                answer.source != pb.SOURCE_EDGE or not scores.all_confident,
                budget_spent,
                scores.signals,
            )
        reply = pb.ReplyHeader(
            request_id=request.header.request_id,
            source=answer.source,
            confidence=answer.scores.confidence.tolist(),
            label=answer.scores.labels.tolist(),
            latency_ms=elapsed * 1000.0,
            model_name=self.model.name,
            model_version=self.model.version,
            detail=answer.detail,
            threshold=answer.scores.threshold,
        )
        if answer.edge_confidence is not None:
            reply.edge_confidence.extend(answer.edge_confidence.tolist())
        return encode_reply(reply, answer.outputs if request.header.options.return_outputs else ())

    def _error(self, request_id: str, code: str, message: str, t0: float) -> list[Any]:
        elapsed = time.perf_counter() - t0
        self.metrics.observe_request("error", elapsed, code)
        if self.observer is not None:
            self.observer.failed(elapsed)
        log.debug("error reply request_id=%s code=%s message=%s", request_id, code, message)
        return error_reply(request_id, code, message)

    def _prepare(self, frames: Sequence[Any]) -> "_Prepared":
        header, arrays = decode_request(frames)
        try:
            if header.model_name and header.model_name != self.model.name:
                raise BadRequestError(
                    f"unknown model {header.model_name!r}: this agent serves "
                    f"{self.model.name!r} version {self.model.version}"
                )
            threshold = header.options.threshold if header.options.HasField("threshold") else None
            if threshold is not None and not 0.0 <= threshold <= 1.0:
                raise BadRequestError(f"threshold {threshold} must be between 0 and 1")
            names = [t.name for t in header.inputs]
            if self.bound:
                names, arrays = drop_bound(self.bound, names, arrays)
            if header.stream_id:
                names, arrays = self.streams.feeds(header.stream_id, names, list(arrays), self.model.input_specs)
            feeds = match_inputs(self.model.input_specs, names, arrays, allow_nan=self.allow_nan)
            self.model.check_shapes(feeds)
        except AgentError as exc:
            exc.request_id = header.request_id
            raise
        # a stream's state, and a bound input sent along, are the general path's job
        if self.lane is not None and not header.stream_id and len(feeds) == len(header.inputs):
            self._teach_lane(self.lane, frames[0], header, feeds)
        return _Prepared(header, feeds, threshold)

    def _teach_lane(self, lane: FastLane, head: Any, header: pb.RequestHeader, feeds: dict[str, np.ndarray]) -> None:
        """Give the fast lane a plan for this accepted header layout (once per layout)."""
        prefix = lane.new_prefix(frame_bytes(head), header.request_id)
        if prefix is None:
            return  # planned already, or not a templated header (the lane could not recognise the next one)
        mode = effective_mode(_REQUEST_MODES.get(header.options.mode), self.mode)
        if mode is ServingMode.EDGE_ONLY:
            edge_only: bool | None = True
        elif mode is ServingMode.HYBRID:
            edge_only = False
        else:
            edge_only = None  # cloud-only or shadow: decisions the lane leaves to this class
        renames = self.model.renames
        tensors = [
            TensorPlan(
                renames.get(name, name), name, a.dtype, a.shape, a.nbytes, not self.allow_nan and a.dtype.kind == "f"
            )
            for name, a in feeds.items()
        ]
        lane.learn(prefix, header, tensors, edge_only)

    def _score(self, request: "_Prepared", outputs: list[np.ndarray]) -> tuple[Answer, Decision]:
        names = self.model.output_names
        check_finite(outputs, names, "the model")
        if request.header.stream_id:  # the next state is the edge run's, whatever answers this request
            self.streams.keep(request.header.stream_id, dict(zip(names, outputs)))
        try:
            scores = self.policy.score(outputs, names, request.threshold)
        except PolicyError as exc:
            raise InferenceError(f"cannot score the model's outputs: {exc}") from exc
        edge = Answer(pb.SOURCE_EDGE, scores, list(zip(names, outputs)))
        decision = self._decide(request, scores.all_confident)
        self.metrics.observe_decision(decision.action)
        return edge, decision

    def _decide(self, request: "_Prepared", confident: bool) -> Decision:
        """The serving mode's decision: the request's own mode (edge or cloud) wins over the device's."""
        mode = effective_mode(_REQUEST_MODES.get(request.header.options.mode), self.mode)
        if mode is ServingMode.EDGE_ONLY or (confident and mode is ServingMode.HYBRID):
            return _EDGE  # the common case: no clock, no budget
        if self.fallback is None:
            if mode is ServingMode.CLOUD_ONLY:
                return _NO_HUB_ASKED
            return _NO_HUB_UNSURE if mode is ServingMode.HYBRID and not confident else _EDGE
        nbytes = sum(a.nbytes for a in request.feeds.values()) if self._count_bytes else 0
        return decide(mode, confident, self.budget, time.monotonic(), self.shadow_sample_rate, self._rng, nbytes)

    def _edge_only(self, request: "_Prepared", edge: Answer, decision: Decision) -> Answer:
        """The edge answer, for every decision but CLOUD: flagged when the hub was wanted and not asked."""
        action = decision.action
        if action is Action.SHADOW:
            self._start_shadow(request, edge.scores)
        elif decision.detail:  # no hub configured, or the budget is spent
            edge.detail = decision.detail
            if action is Action.BUDGET_SPENT:
                edge.source = pb.SOURCE_EDGE_DEGRADED
            if not edge.scores.all_confident:
                self._keep_hard_example(
                    request.header.request_id, request.feeds, edge.scores, _SOURCE_NAMES[edge.source]
                )
        return edge

    def _start_shadow(self, request: "_Prepared", scores: Scores) -> None:
        """Ask the hub too, on the fallback executor, after the edge answer has gone; compare top-1 labels."""
        if self.fallback_executor is None or not self._shadow_slots.acquire(blocking=False):
            self.metrics.observe_shadow_failed(skipped=True)
            return
        # the request's buffers may be network frames that the server reuses once it has replied
        feeds = {name: np.array(a) for name, a in request.feeds.items()}
        labels = scores.labels.copy()
        try:
            self.fallback_executor.submit(self._shadow, feeds, labels, scores.threshold, request.header.request_id)
        except RuntimeError:  # the executor is shutting down
            self._shadow_slots.release()

    def _shadow(self, feeds: dict[str, np.ndarray], labels: np.ndarray, threshold: float, request_id: str) -> None:
        try:
            result = self._hub().infer(
                self.hub_model,
                {**feeds, **self.bound_feeds},
                device_id=self.device_id,
                model_version=self.model.version,
                request_id=request_id,
            )
            cloud = self._score_cloud(dict(result.outputs), threshold)
        except Exception as exc:  # FallbackUnavailable, or a hub answer the policy cannot score
            self.metrics.observe_shadow_failed()
            log.debug("shadow call failed request_id=%s error=%s", request_id, exc)
            return
        finally:
            self._shadow_slots.release()
        rows = len(labels)
        if len(cloud.labels) != rows:  # an answer for other rows says nothing about agreement
            self.metrics.observe_shadow_failed()
            log.debug("shadow call answered %d rows for %d request_id=%s", len(cloud.labels), rows, request_id)
            return
        agree = int(np.count_nonzero(cloud.labels == labels))
        self.metrics.observe_shadow(rows, agree)
        if self.observer is not None:
            self.observer.shadowed(rows, agree)

    def inline_ready(self) -> bool:
        """True when this request may run on the loop thread instead of the batcher's worker.

        Always for models faster than a hand-off (inline_max_us); for models up to
        solo_inline_max_us only while clients come one at a time and nothing waits on the
        worker or the hub: a lone client gains the two hand-offs, and has no one to batch with.
        """
        # the runtime's own time, not ours: hand-offs on a busy machine must not keep a fast model off this path
        run_s = self.batcher.run_ewma_s  # None until measured: the first run goes to the worker
        if run_s is None:
            return False
        if run_s < self.inline_max_s:
            return True
        concurrency = self.concurrency
        return run_s < self.solo_inline_max_s and concurrency is not None and concurrency.alone and self.pending == 0

    def _run_inline(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """Run on this (the loop's) thread when inline_ready() allows and the batcher is idle; else None."""
        if not self.inline_ready():
            return None
        return self._run_now(feeds)

    def _run_now(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """_run_inline once inline_ready() said yes (the fast lane asks it first): None when the batcher is busy."""
        t0 = time.perf_counter()
        try:
            outputs = self.batcher.try_run_inline(feeds)
        except Exception as exc:
            raise InferenceError(f"the runtime rejected the request: {str(exc).splitlines()[0][:500]}") from exc
        if outputs is not None:
            self._observe_runtime(time.perf_counter() - t0)
        return outputs

    async def _run_worker(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        try:
            future = self.batcher.submit(feeds)
        except QueueFullError as exc:
            raise OverloadedError(f"{exc}; retry later") from exc
        except BatcherClosedError as exc:
            raise AgentError("the agent is shutting down") from exc
        try:
            outputs = await asyncio.wrap_future(future)
        except BatcherClosedError as exc:
            raise AgentError("the agent is shutting down") from exc
        except Exception as exc:
            raise InferenceError(f"the runtime rejected the request: {str(exc).splitlines()[0][:500]}") from exc
        self._observe_runtime(time.perf_counter() - t0)
        return outputs

    def _observe_runtime(self, seconds: float) -> None:
        self.metrics.observe_runtime(seconds)  # includes queueing when run by the worker

    def _hub(self) -> Fallback:
        """The fallback client: only paths that `_decide` opened ask for it, and it opens them only with one."""
        if self.fallback is None:
            raise FallbackUnavailable("no hub is configured")
        return self.fallback

    async def _ask_hub(
        self, feeds: dict[str, np.ndarray], scores: Scores, request_id: str, span: SpanContext | None = None
    ) -> Answer:
        one_row = scores.labels.shape[0] == 1
        # the call is a child span of this request's (a stand-in Fallback without tracing gets no keyword)
        trace: dict[str, Any] = {"traceparent": span.traceparent} if span is not None else {}
        call = lambda: self._hub().infer(  # noqa: E731
            self.hub_model,
            {**feeds, **self.bound_feeds} if self.bound_feeds else feeds,
            device_id=self.device_id,
            model_version=self.model.version,
            edge_label=int(scores.labels[0]) if one_row else None,
            edge_confidence=float(scores.confidence[0]) if one_row else None,
            request_id=request_id,
            **trace,
        )
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        call_span: SpanContext | None = None
        error: str | None = None
        try:
            result = await asyncio.wait_for(
                loop.run_in_executor(self.fallback_executor, call), self.deadline_s + FALLBACK_GRACE_S
            )
            call_span = result.trace
            cloud_outputs = dict(result.outputs)
            cloud_scores = self._score_cloud(cloud_outputs, scores.threshold)
            if cloud_scores.labels.shape[0] != scores.labels.shape[0]:  # never a cloud answer for other rows
                raise InferenceError(
                    f"the hub answered {cloud_scores.labels.shape[0]} row(s) for a request of "
                    f"{scores.labels.shape[0]}; is [fallback] hub_model the same model?"
                )
        except (FallbackUnavailable, asyncio.TimeoutError, InferenceError) as exc:
            call_span = call_span or getattr(exc, "trace", None)
            reason = str(exc) or f"the hub did not answer within {self.deadline_s * 1000:.0f} ms"
            error = reason
            return Answer(pb.SOURCE_EDGE_DEGRADED, scores, [], detail=f"hub unavailable: {reason}")
        except Exception as exc:  # the client should only raise FallbackUnavailable; be safe anyway
            log.warning("fallback failed unexpectedly error=%s: %s", type(exc).__name__, exc)
            error = f"{type(exc).__name__}: {exc}"
            return Answer(pb.SOURCE_EDGE_DEGRADED, scores, [], detail=f"hub call failed: {type(exc).__name__}: {exc}")
        finally:
            t1 = time.perf_counter()
            self.metrics.observe_fallback(t1 - t0)
            if self.tracer is not None and span is not None and call_span is not None:
                self.tracer.fallback(call_span, span, t0, t1, self.hub_model, error)
        return Answer(pb.SOURCE_CLOUD, cloud_scores, list(cloud_outputs.items()), edge_confidence=scores.confidence)

    def _score_cloud(self, outputs: dict[str, np.ndarray], threshold: float) -> Scores:
        """Labels and confidence of the hub's answer, by the edge policy (its output name when the hub has it)."""
        if not outputs:
            raise InferenceError("the hub answered with no outputs")
        wanted = self.policy.output
        values = list(outputs.values())
        if isinstance(wanted, str) and wanted in outputs:
            raw = outputs[wanted]
        elif isinstance(wanted, int) and 0 <= wanted < len(values):
            raw = values[wanted]
        else:
            raw = values[0]
        check_finite(values, list(outputs), "the hub")  # -> the edge answer, flagged degraded
        try:
            return self.policy.score_array(raw, threshold)
        except PolicyError as exc:
            raise InferenceError(f"cannot score the hub's answer: {exc}") from exc

    def _keep_hard_example(self, request_id: str, feeds: dict[str, np.ndarray], scores: Scores, source: str) -> None:
        if self.hard_examples is None:
            return
        i = int(np.nanargmin(scores.confidence)) if np.isfinite(scores.confidence).any() else 0
        self.hard_examples.put(
            feeds,
            request_id=request_id,
            model=self.model.name,
            version=self.model.version,
            label=int(scores.labels[i]),
            confidence=float(scores.confidence[i]),
            source=source,
        )


# A request's own mode on the wire; MODE_AUTO (absent here) defers to the device's (modes.effective_mode).
_REQUEST_MODES = {pb.MODE_EDGE_ONLY: ServingMode.EDGE_ONLY, pb.MODE_CLOUD_ONLY: ServingMode.CLOUD_ONLY}
_EDGE = Decision(Action.EDGE)
_NO_HUB_UNSURE = Decision(Action.EDGE, "below threshold; no hub is configured")
_NO_HUB_ASKED = Decision(Action.EDGE, "cloud answer requested; no hub is configured")
_SOURCE_NAMES = {
    pb.SOURCE_EDGE: "edge",
    pb.SOURCE_CLOUD: "cloud",
    pb.SOURCE_EDGE_DEGRADED: "edge-degraded",
    pb.SOURCE_ERROR: "error",
}


def check_finite(outputs: Sequence[np.ndarray], names: Sequence[str], who: str) -> None:
    """NonFiniteOutputError naming the first float output holding NaN or infinity (finite inputs can overflow)."""
    for name, array in zip(names, outputs):
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise NonFiniteOutputError(
                f"{who} answered {bad} non-finite value(s) (NaN or infinity) in output "
                f"{name!r}; the input may be out of the range the model was trained on"
            )

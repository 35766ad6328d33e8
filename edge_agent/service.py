"""One request's path through the agent: decode -> check -> batch -> policy -> (hub) -> reply.

The steps are plain methods over values; the socket lives in `server.py`, the wiring
in `agent.py`. Every failure becomes an error reply with a code and a message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Awaitable, Sequence

import numpy as np

from edge_agent.errors import AgentError, BadRequestError, FallbackUnavailable, InferenceError, OverloadedError
from edge_agent.hard_examples import HardExampleQueue
from edge_agent.metrics import AgentMetrics
from edge_agent.model import LoadedModel, match_inputs
from edge_agent.observe import RequestObserver
from edge_agent.policy import ConfidencePolicy, PolicyError, Scores
from edge_agent.wire import decode_request, encode_reply, error_reply
from hardware_profiles.runtimes.batching import BatcherClosedError, MicroBatcher, QueueFullError
from protocols import local_api_pb2 as pb

log = logging.getLogger(__name__)

# How long past the fallback deadline the agent waits before answering degraded anyway
# (covers thread hand-off; the fallback client enforces the deadline itself).
FALLBACK_GRACE_S = 0.05


@dataclass
class _Prepared:
    header: pb.RequestHeader
    feeds: dict[str, np.ndarray]
    threshold: float | None


@dataclass
class Answer:
    source: int
    scores: Scores
    outputs: list[tuple[str, np.ndarray]]
    detail: str = ""
    edge_confidence: np.ndarray | None = None


class InferenceService:
    """Answers local-API requests for one loaded model."""

    def __init__(self, model: LoadedModel, batcher: MicroBatcher, policy: ConfidencePolicy, metrics: AgentMetrics, *,
                 device_id: str, allow_nan: bool = False, fallback: Any = None, fallback_executor: Executor | None = None,
                 deadline_ms: float = 200.0, hub_model: str | None = None,
                 hard_examples: HardExampleQueue | None = None, inline_max_us: float = 0.0,
                 observer: RequestObserver | None = None) -> None:
        self.model = model
        self.batcher = batcher
        self.policy = policy
        self.metrics = metrics
        self.device_id = device_id
        self.allow_nan = allow_nan
        self.fallback = fallback
        self.fallback_executor = fallback_executor
        self.deadline_s = deadline_ms / 1000.0
        self.hub_model = hub_model or model.name
        self.hard_examples = hard_examples
        self.observer = observer  # health-watch figures and telemetry, one call per reply
        self.pending = 0          # requests waiting on the runtime or the hub (loop thread only); drained on a swap
        # Models whose calls take less than this run on the loop thread when the batcher is
        # idle: for them the hand-off to the worker thread costs more than the model.
        self.inline_max_s = inline_max_us / 1e6
        self._runtime_ewma_s: float | None = None  # unknown until measured: the first run goes to the worker

    def handle(self, frames: Sequence[Any]) -> list[Any] | Awaitable[list[Any]]:
        """Reply frames, at once when no waiting is needed (fast model, confident), else an awaitable.

        The synchronous path saves the event loop a task and a turn per request; see server.py.
        """
        t0 = time.perf_counter()
        try:
            request = self._prepare(frames)
            outputs = self._run_inline(self.model.runtime_feeds(request.feeds))
            if outputs is not None:
                edge, wants_hub = self._score(request, outputs)
                if not wants_hub or self.fallback is None:
                    return self._reply(request, self._edge_only(request, edge, wants_hub), t0)
        except Exception as exc:
            return self._failure(exc, t0)
        self.pending += 1
        return self._finish(request, t0, outputs)

    async def _finish(self, request: "_Prepared", t0: float, outputs: list[np.ndarray] | None) -> list[Any]:
        try:
            if outputs is None:
                outputs = await self._run_worker(self.model.runtime_feeds(request.feeds))
            edge, wants_hub = self._score(request, outputs)
            if not wants_hub or self.fallback is None:
                return self._reply(request, self._edge_only(request, edge, wants_hub), t0)
            answer = await self._ask_hub(request.feeds, edge.scores, request.header.request_id)
            if not edge.scores.all_confident:
                self._keep_hard_example(request.header.request_id, request.feeds, edge.scores,
                                        _SOURCE_NAMES[answer.source])
            if answer.source == pb.SOURCE_EDGE_DEGRADED:
                edge.source, edge.detail = pb.SOURCE_EDGE_DEGRADED, answer.detail
                answer = edge
            return self._reply(request, answer, t0)
        except Exception as exc:
            return self._failure(exc, t0, request.header.request_id)
        finally:
            self.pending -= 1

    def _failure(self, exc: Exception, t0: float, request_id: str = "") -> list[Any]:
        request_id = getattr(exc, "request_id", request_id)
        if isinstance(exc, AgentError):
            return self._error(request_id, exc.code, str(exc), t0)
        # a bug, not the client's fault: say so, keep serving
        log.error("request failed request_id=%s", request_id, exc_info=exc)
        return self._error(request_id, "internal", f"internal error: {type(exc).__name__}: {exc}", t0)

    def _reply(self, request: "_Prepared", answer: Answer, t0: float) -> list[Any]:
        elapsed = time.perf_counter() - t0
        self.metrics.observe_request(_SOURCE_NAMES[answer.source], elapsed)
        if self.observer is not None:
            scores = answer.scores
            self.observer.answered(_SOURCE_NAMES[answer.source], elapsed, scores.confidence, scores.labels,
                                   request.feeds, answer.source != pb.SOURCE_EDGE or not scores.all_confident)
        reply = pb.ReplyHeader(
            request_id=request.header.request_id, source=answer.source,
            confidence=answer.scores.confidence.tolist(), label=answer.scores.labels.tolist(),
            latency_ms=elapsed * 1000.0, model_name=self.model.name, model_version=self.model.version,
            detail=answer.detail, threshold=answer.scores.threshold,
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
                raise BadRequestError(f"unknown model {header.model_name!r}: this agent serves "
                                      f"{self.model.name!r} version {self.model.version}")
            threshold = header.options.threshold if header.options.HasField("threshold") else None
            if threshold is not None and not 0.0 <= threshold <= 1.0:
                raise BadRequestError(f"threshold {threshold} must be between 0 and 1")
            feeds = match_inputs(self.model.input_specs, [t.name for t in header.inputs], arrays,
                                 allow_nan=self.allow_nan)
        except AgentError as exc:
            exc.request_id = header.request_id  # type: ignore[attr-defined]
            raise
        return _Prepared(header, feeds, threshold)

    def _score(self, request: "_Prepared", outputs: list[np.ndarray]) -> tuple[Answer, bool]:
        names = self.model.output_names
        try:
            scores = self.policy.score(outputs, names, request.threshold)
        except PolicyError as exc:
            raise InferenceError(f"cannot score the model's outputs: {exc}") from exc
        mode = request.header.options.mode
        wants_hub = mode == pb.MODE_CLOUD_ONLY or (mode == pb.MODE_AUTO and not scores.all_confident)
        return Answer(pb.SOURCE_EDGE, scores, list(zip(names, outputs))), wants_hub

    def _edge_only(self, request: "_Prepared", edge: Answer, wants_hub: bool) -> Answer:
        if wants_hub:  # and no hub is configured
            unsure = not edge.scores.all_confident
            edge.detail = ("below threshold; " if unsure else "cloud answer requested; ") + "no hub is configured"
            if unsure:
                self._keep_hard_example(request.header.request_id, request.feeds, edge.scores, "edge")
        return edge

    def _run_inline(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """Run on this (the loop's) thread when the model is known to be faster than a hand-off."""
        if self._runtime_ewma_s is None or self._runtime_ewma_s >= self.inline_max_s:
            return None
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
        self.metrics.observe_runtime(seconds)
        # includes queueing when run by the worker, which only makes inlining rarer under load
        if self._runtime_ewma_s is None:
            self._runtime_ewma_s = seconds
        else:
            self._runtime_ewma_s += 0.1 * (seconds - self._runtime_ewma_s)

    async def _ask_hub(self, feeds: dict[str, np.ndarray], scores: Scores, request_id: str) -> Answer:
        one_row = scores.labels.shape[0] == 1
        call = lambda: self.fallback.infer(  # noqa: E731
            self.hub_model, feeds, device_id=self.device_id, model_version=self.model.version,
            edge_label=int(scores.labels[0]) if one_row else None,
            edge_confidence=float(scores.confidence[0]) if one_row else None, request_id=request_id,
        )
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self.fallback_executor, call),
                                            self.deadline_s + FALLBACK_GRACE_S)
            cloud_outputs = dict(result.outputs)
            cloud_scores = self._score_cloud(cloud_outputs, scores.threshold)
        except (FallbackUnavailable, asyncio.TimeoutError, InferenceError) as exc:
            reason = str(exc) or f"the hub did not answer within {self.deadline_s * 1000:.0f} ms"
            return Answer(pb.SOURCE_EDGE_DEGRADED, scores, [], detail=f"hub unavailable: {reason}")
        except Exception as exc:  # the client should only raise FallbackUnavailable; be safe anyway
            log.warning("fallback failed unexpectedly error=%s: %s", type(exc).__name__, exc)
            return Answer(pb.SOURCE_EDGE_DEGRADED, scores, [], detail=f"hub call failed: {type(exc).__name__}: {exc}")
        finally:
            self.metrics.observe_fallback(time.perf_counter() - t0)
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
        try:
            return self.policy.score_array(raw, threshold)
        except PolicyError as exc:
            raise InferenceError(f"cannot score the hub's answer: {exc}") from exc

    def _keep_hard_example(self, request_id: str, feeds: dict[str, np.ndarray], scores: Scores, source: str) -> None:
        if self.hard_examples is None:
            return
        i = int(np.nanargmin(scores.confidence)) if np.isfinite(scores.confidence).any() else 0
        self.hard_examples.put(feeds, request_id=request_id, model=self.model.name, version=self.model.version,
                               label=int(scores.labels[i]), confidence=float(scores.confidence[i]), source=source)


_SOURCE_NAMES = {pb.SOURCE_EDGE: "edge", pb.SOURCE_CLOUD: "cloud", pb.SOURCE_EDGE_DEGRADED: "edge-degraded",
                 pb.SOURCE_ERROR: "error"}

"""The agent's fast lane: the common local-API request answered in a few steps.

Most requests a device sees look like the one before: the same client sends the same
input layout with the same options, and only the request id and the tensor bytes change
(our clients build headers from templates, `wire.RequestTemplates`, which put the
request id last). Once the general path (`InferenceService`) has checked such a header,
the lane keeps a `Plan` for its bytes up to the request id: which model inputs the
tensors are, their dtypes, shapes and sizes, the threshold and the serving decision.
A request whose header starts with known bytes and ends in a plain request id is then
answered with a size check per frame, the NaN/inf check, one inline runtime call, the
policy's own scoring and a reply assembled from pre-encoded bytes.

The lane only ever answers what the general path would answer the same way (a
confident edge answer, or any edge answer when the request or device is edge-only);
everything else goes back to the general path (`None`), which decides and words every
error. It exists because each Python step costs the agent more than the model: the lane
takes about half the general path's time per digits request, for a runtime call a
fraction of either (figures with date and host in docs/figures.md).
`tests/test_agent_fast_lane.py` checks both paths reply the same.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from tandem.protocols import limits
from tandem.protocols import local_api_pb2 as pb

if TYPE_CHECKING:  # collaborators, typed without importing them at run time
    from tandem.edge_agent.metrics import ModelMetrics
    from tandem.edge_agent.observe import RequestObserver
    from tandem.edge_agent.policy import ConfidencePolicy

PLANS_MAX = 64  # distinct header layouts kept before starting over
_FIXED64, _LENGTH_DELIMITED, _FIXED32 = 1, 2, 5  # protobuf wire types


def _key(message: Any, field: str) -> int:
    """The one-byte key protobuf writes before `field` of `message` (field number << 3 | wire type), read
    from local_api.proto's descriptors so the pre-encoded reply cannot drift from the schema."""
    f = message.DESCRIPTOR.fields_by_name[field]
    if f.is_packed or f.type in (f.TYPE_STRING, f.TYPE_BYTES):
        wire = _LENGTH_DELIMITED
    elif f.type in (f.TYPE_DOUBLE, f.TYPE_FIXED64):
        wire = _FIXED64
    elif f.type in (f.TYPE_FLOAT, f.TYPE_FIXED32):
        wire = _FIXED32
    else:
        raise TypeError(f"{message.DESCRIPTOR.name}.{field}: the fast lane does not pre-encode this field type")
    key = f.number << 3 | wire
    if key > 0x7F:
        raise TypeError(f"{message.DESCRIPTOR.name}.{field}: field {f.number} needs a two-byte key")
    return key


_REQUEST_ID_TAG = _key(pb.ReplyHeader, "request_id")  # the same key ends a RequestHeader (checked below)
if _key(pb.RequestHeader, "request_id") != _REQUEST_ID_TAG:
    raise ImportError("local_api.proto: request_id must have the same field number in RequestHeader and ReplyHeader")
_CONFIDENCE_TAG = bytes((_key(pb.ReplyHeader, "confidence"),))  # packed floats
_LABEL_TAG = bytes((_key(pb.ReplyHeader, "label"),))  # packed varints
_LATENCY_TAG = _key(pb.ReplyHeader, "latency_ms")
_THRESHOLD_TAG = _key(pb.ReplyHeader, "threshold")
_LATENCY = struct.Struct("<Bd")  # key, then the double
_THRESHOLD = struct.Struct("<Bf")  # key, then the float
_FLOATS = {n: struct.Struct(f"<{n}f") for n in range(1, 9)}
# the usual reply's changing fields in one pack: one confidence (packed floats, 4 bytes), one label
# under 128 (packed varints, 1 byte), the latency, and the threshold when it is not 0 (proto3 omits 0)
_ONE_ROW = struct.Struct("<BBfBBBBd")
_ONE_ROW_THRESHOLD = struct.Struct("<BBfBBBBdBf")


@dataclass(frozen=True)
class TensorPlan:
    feed_name: str  # the name the runtime knows the input by
    spec_name: str  # the model's input name (what telemetry and hard examples see)
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int
    check_finite: bool  # floats, unless the agent allows NaN


@dataclass(frozen=True)
class Plan:
    """What the general path established for one header layout."""

    tensors: tuple[TensorPlan, ...]
    threshold: float | None  # the request's own threshold, or None: the model's
    edge_only: bool  # the request or the device is edge-only: every edge answer is final


def request_id_tail(header_bytes: bytes, request_id: str) -> int:
    """Length of the header's trailing request-id field, or 0 when it does not end in one.

    A one-byte length only (ids up to 127 bytes): what our clients' templates send.
    """
    rid = request_id.encode()
    if not rid or len(rid) > 0x7F:
        return 0
    tail = bytes((_REQUEST_ID_TAG, len(rid))) + rid
    return len(tail) if header_bytes.endswith(tail) else 0


def frame_bytes(frame: Any) -> bytes:
    """A (small, header) frame as bytes: zmq.Frame caches them; bytes stay as they are."""
    if type(frame) is bytes:
        return frame
    cached = getattr(frame, "bytes", None)
    return cached if type(cached) is bytes else bytes(frame)


def all_finite(array: np.ndarray) -> bool:
    """False when `array` (floats) may hold NaN or infinity: then the general path decides with np.isfinite.

    One BLAS dot of the values with themselves: its squares are >= 0, so a NaN or an infinity
    anywhere makes it NaN or infinite, never finite; it may also overflow on finite values above
    ~1e19 (float32), which only sends such a request the general way. Cheaper than a float64 sum
    (a cast and a reduction) on inputs of any size. Halves and smaller keep that sum (their
    square overflows at 256).
    """
    if array.dtype.itemsize < 4:
        return math.isfinite(array.sum(dtype=np.float64))
    flat = array.reshape(-1)
    return math.isfinite(flat.dot(flat))


def _varints(values: Sequence[int]) -> bytes:
    out = bytearray()
    for n in values:
        if n < 0:  # labels are argmax indices; a negative one is encoded as protobuf does (10 bytes)
            n += 1 << 64
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


def _length(n: int) -> bytes:
    return _varints((n,))


class FastLane:
    """Plans by header prefix, and the lane that answers with them; one per served model version."""

    def __init__(
        self,
        *,
        model_name: str,
        model_version: str,
        output_names: Sequence[str],
        policy: ConfidencePolicy,
        run_inline: Callable[[dict[str, np.ndarray]], list[np.ndarray] | None],
        inline_ready: Callable[[], bool],
        metrics: ModelMetrics,
        observer: RequestObserver | None,
        max_plans: int = PLANS_MAX,
    ) -> None:
        """`inline_ready` says whether the model may run on this thread; `run_inline` then runs it there
        (None: the batcher is busy now)."""
        self._plans: dict[bytes, Plan | None] = {}  # None: a prefix seen and not fit for the lane
        self.answered = 0  # requests this lane answered (the rest went the general path)
        self._prefix_lengths: list[int] = []
        self._max_plans = max_plans
        self._output_names = list(output_names)
        self._policy = policy
        self._run_inline = run_inline
        self._inline_ready = inline_ready
        self._metrics = metrics
        self._observer = observer
        self._reply_head = pb.ReplyHeader(
            schema_version=limits.LOCAL_API_SCHEMA_VERSION,
            source=pb.SOURCE_EDGE,
            model_name=model_name,
            model_version=model_version,
        ).SerializeToString()

    @property
    def plans(self) -> int:
        return sum(plan is not None for plan in self._plans.values())

    def new_prefix(self, header_bytes: bytes, request_id: str) -> bytes | None:
        """The header's bytes before its trailing request-id field, if it has one and the lane has not seen them.

        The general path asks this for every request it checks, so a layout already planned
        (or found unfit) costs a comparison, not a new plan.
        """
        tail = request_id_tail(header_bytes, request_id)
        if not tail:
            return None
        prefix = header_bytes[:-tail]
        return None if prefix in self._plans else prefix

    def learn(
        self, prefix: bytes, header: pb.RequestHeader, tensors: Sequence[TensorPlan], edge_only: bool | None
    ) -> None:
        """Keep a plan for `prefix` (from `new_prefix`) of a header the general path accepted;
        `edge_only` None: the lane must not answer it."""
        plan = None
        if (
            edge_only is not None
            and not header.options.return_outputs
            and not header.stream_id
            and _splits_cleanly(prefix, header)
        ):
            threshold = header.options.threshold if header.options.HasField("threshold") else None
            plan = Plan(tuple(tensors), threshold, edge_only)
        if len(self._plans) >= self._max_plans:
            self._plans.clear()
            self._prefix_lengths.clear()
        self._plans[prefix] = plan
        if len(prefix) not in self._prefix_lengths:
            self._prefix_lengths.append(len(prefix))

    def answer(self, frames: Sequence[Any], t0: float) -> tuple[list[Any] | None, list[np.ndarray] | None]:
        """(reply frames, None) when the lane answers; (None, outputs or None) when the general path must.

        Outputs come back when the model already ran (an unsure answer), so it does not run twice.
        Runtime failures raise as in InferenceService._run_inline.
        """
        if not self._inline_ready():  # a model for the worker thread: nothing here would save time
            return None, None
        hb = frame_bytes(frames[0])
        for length in self._prefix_lengths:
            plan = self._plans.get(hb[:length])
            if plan is not None:
                break
        else:
            return None, None
        tail = hb[length:]
        if len(tail) < 2 or tail[0] != _REQUEST_ID_TAG or tail[1] != len(tail) - 2:
            return None, None
        try:
            tail[2:].decode()  # protobuf strings are UTF-8; the general path says what is wrong otherwise
        except UnicodeDecodeError:
            return None, None
        tensors = plan.tensors
        if len(frames) != len(tensors) + 1:
            return None, None
        feeds: dict[str, np.ndarray] = {}
        inputs: dict[str, np.ndarray] = {}
        for t, frame in zip(tensors, frames[1:]):
            buf = getattr(frame, "buffer", None) or memoryview(frame)  # zmq.Frame, bytes, memoryview
            if buf.nbytes != t.nbytes:
                return None, None
            array = np.frombuffer(buf, dtype=t.dtype).reshape(t.shape)
            if t.check_finite and not all_finite(array):
                return None, None
            feeds[t.feed_name] = array
            inputs[t.spec_name] = array
        outputs = self._run_inline(feeds)
        if outputs is None:  # the batcher is busy or the model is not fast enough: the worker runs it
            return None, None
        for out in outputs:  # NaN/inf out: the general path answers the non_finite_output error
            if out.dtype.kind == "f" and not all_finite(out):
                return None, outputs
        try:
            scores = self._policy.score(outputs, self._output_names, plan.threshold)
        except Exception:
            return None, outputs  # the general path words the scoring error
        decided = scores.confident
        confident = bool(decided[0]) if decided.shape == (1,) else bool(decided.all())
        if not (confident or plan.edge_only):
            return None, outputs
        self.answered += 1
        self._metrics.observe_decision("edge")
        elapsed = time.perf_counter() - t0
        self._metrics.observe_request("edge", elapsed)
        if self._observer is not None:
            self._observer.answered(
                "edge", elapsed, scores.confidence, scores.labels, inputs, not confident, False, scores.signals
            )
        return [self._reply(tail, scores, elapsed * 1000.0)], None

    def _reply(self, request_id_field: bytes, scores: Any, latency_ms: float) -> bytes:
        """ReplyHeader bytes: the pre-encoded head, then the fields that change (protobuf merges them)."""
        confidence = scores.confidence.tolist()
        label_list = scores.labels.tolist()
        rows = len(confidence)
        if rows == 1 and 0 <= label_list[0] < 0x80:  # one byte per field of the usual reply
            fields = (_CONFIDENCE_TAG[0], 4, confidence[0], _LABEL_TAG[0], 1, label_list[0], _LATENCY_TAG, latency_ms)
            if scores.threshold != 0.0:
                return (
                    self._reply_head
                    + request_id_field
                    + _ONE_ROW_THRESHOLD.pack(*fields, _THRESHOLD_TAG, scores.threshold)
                )
            return self._reply_head + request_id_field + _ONE_ROW.pack(*fields)
        floats = _FLOATS.get(rows) or struct.Struct(f"<{rows}f")
        labels = _varints(label_list)
        parts = [self._reply_head, request_id_field]
        if rows:
            parts += [
                _CONFIDENCE_TAG,
                _length(4 * rows),
                floats.pack(*confidence),
                _LABEL_TAG,
                _length(len(labels)),
                labels,
            ]
        parts.append(_LATENCY.pack(_LATENCY_TAG, latency_ms))
        if scores.threshold != 0.0:
            parts.append(_THRESHOLD.pack(_THRESHOLD_TAG, scores.threshold))
        return b"".join(parts)


def _splits_cleanly(prefix: bytes, header: pb.RequestHeader) -> bool:
    """True when `prefix` is a header of its own that differs from `header` only by the request id.

    Then any prefix + request-id field parses as `header` with that id (protobuf keeps the
    last value of a scalar field), so the lane may skip parsing it.
    """
    alone = pb.RequestHeader()
    try:
        alone.ParseFromString(prefix)
    except Exception:
        return False
    alone.request_id = header.request_id
    return alone == header

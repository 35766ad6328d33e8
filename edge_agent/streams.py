"""Per-stream state for stateful models (a streaming VAD, an RNN): the agent feeds a stream's
state inputs from its previous answer and keeps the state the edge model returns.

Which inputs are state: those the manifest's task names (`state`, from `--task-option
state=IN:OUT`), else an input whose name, with one of STATE_SUFFIXES, is an output name
(`state` -> `stateN`, `h` -> `h_out`, ...). A request with a `stream_id` may omit them; the
first request of a stream (or one after expiry) starts from zeros. The rule for fallback: the
stream's next state always comes from the edge model's own run, never from the hub's answer
(the hub may run another model whose state means something else); the hub gets the request's
inputs with the edge's current state. Streams are bounded (least recently used evicted first)
and expire after `idle_s` without a request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np

from tandem.edge_agent.errors import BadRequestError, ModelLoadError

STATE_SUFFIXES = ("N", "n", "_out", "_next", "Next", "_new", "_o")
STREAMS_MAX = 1024  # streams kept at once; the least recently used goes first
STREAM_IDLE_S = 300.0  # a stream unused this long starts again from zeros
STREAM_ID_MAX_CHARS = 128


def state_pairs(
    input_names: Sequence[str], output_names: Sequence[str], stated: Mapping[str, str] | None = None
) -> dict[str, str]:
    """State input -> the output that carries its next value: as `stated` (the task's `state`), else by name."""
    outputs = set(output_names)
    if stated:
        bad = [f"{i}:{o}" for i, o in stated.items() if i not in input_names or o not in outputs]
        if bad:
            raise ModelLoadError(
                f"task state {', '.join(bad)}: not an input:output pair of the served variant "
                f"(inputs: {', '.join(input_names)}; outputs: {', '.join(output_names)})"
            )
        return dict(stated)
    pairs = {}
    for name in input_names:
        for suffix in STATE_SUFFIXES:
            if name + suffix in outputs:
                pairs[name] = name + suffix
                break
    return pairs


class StreamStates:
    """stream id -> state arrays by input name; LRU-bounded with idle expiry; thread-safe."""

    def __init__(self, pairs: Mapping[str, str], max_streams: int = STREAMS_MAX, idle_s: float = STREAM_IDLE_S) -> None:
        if max_streams < 1 or idle_s <= 0:
            raise ValueError(f"streams: max_streams must be >= 1 and idle_s > 0, got {max_streams}, {idle_s}")
        self.pairs = dict(pairs)
        self.max_streams = max_streams
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._streams: OrderedDict[str, tuple[float, dict[str, np.ndarray]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def feeds(
        self,
        stream_id: str,
        names: list[str],
        arrays: list[np.ndarray],
        specs: Sequence[object],
        now: float | None = None,
    ) -> tuple[list[str], list[np.ndarray]]:
        """The request's tensors plus the stream's state for every state input the request did not send."""
        if not self.pairs:
            raise BadRequestError(
                "stream_id: this model keeps no state (no output carries an input's next value, "
                "e.g. 'state' -> 'stateN'); send the request without a stream id"
            )
        if len(stream_id) > STREAM_ID_MAX_CHARS:
            raise BadRequestError(f"stream_id: {len(stream_id)} characters, the limit is {STREAM_ID_MAX_CHARS}")
        if any(not n for n in names):
            raise BadRequestError("stream_id: name every input (a stream's state inputs are filled in by name)")
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire(now)
            entry = self._streams.get(stream_id)
            state = entry[1] if entry is not None else {}
        rows = next((int(a.shape[0]) for a in arrays if a.ndim), 1)
        names, arrays = list(names), list(arrays)
        for spec in specs:
            name = getattr(spec, "name")
            if name in self.pairs and name not in names:
                value = state.get(name)
                if value is None:  # a new stream: zeros, the batch (-1) axis sized to the request's rows
                    shape = tuple(rows if d == -1 else int(d) for d in getattr(spec, "shape"))
                    value = np.zeros(shape, dtype=np.dtype(getattr(spec, "dtype")))
                names.append(name)
                arrays.append(value)
        return names, arrays

    def keep(self, stream_id: str, outputs: Mapping[str, np.ndarray], now: float | None = None) -> None:
        """Keep the edge model's new state for the stream (its outputs by name)."""
        state = {inp: np.array(outputs[out]) for inp, out in self.pairs.items() if out in outputs}
        now = time.monotonic() if now is None else now
        with self._lock:
            self._streams[stream_id] = (now, state)
            self._streams.move_to_end(stream_id)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._streams:
            sid, (last, _) = next(iter(self._streams.items()))
            if now - last < self.idle_s:
                break
            del self._streams[sid]

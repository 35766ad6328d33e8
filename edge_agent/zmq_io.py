"""Send and receive multipart ZeroMQ messages through pyzmq's Cython backend, with plain int flags.

pyzmq's Python layer (Socket.send_multipart / recv_multipart, getsockopt, and its enum flags,
each `&` or `|` of which builds an enum member) costs the local API more per request than a
digits model run: 17.3 us for a send and receive in-process against 10.5 us this way
(docs/figures.md). The agent's server, its clients and bench/agent.py's echo floor all use these.
"""

from __future__ import annotations

from typing import Any, Sequence, cast

import zmq
from zmq.backend import Socket as _BackendSocket

_EVENTS, _RCVMORE = int(zmq.EVENTS), int(zmq.RCVMORE)
POLLIN, _NOBLOCK, _SNDMORE = int(zmq.POLLIN), int(zmq.NOBLOCK), int(zmq.SNDMORE)
_get, _recv, _send_part = _BackendSocket.get, _BackendSocket.recv, _BackendSocket.send


def readable(sock: zmq.Socket) -> bool:
    """Does a whole message wait on `sock`? (ZMQ_EVENTS, asked of the socket itself.)"""
    return bool(cast(int, _get(sock, _EVENTS)) & POLLIN)


def recv_frames(sock: zmq.Socket, block: bool = False, copy: bool = False, small_first: int = 0) -> list[Any]:
    """One multipart message: zmq.Frames, or bytes with `copy`; the first `small_first` parts (a ROUTER's
    envelope, a header) as bytes either way, which for parts of a few hundred bytes costs half a Frame.
    Without `block` raises zmq.Again when none waits; with it, waits up to the socket's RCVTIMEO (then zmq.Again).
    """
    frames = [_recv(sock, 0 if block else _NOBLOCK, copy or small_first > 0)]
    while _get(sock, _RCVMORE):  # the parts of a message arrive together: these never wait
        frames.append(_recv(sock, _NOBLOCK, copy or len(frames) < small_first))
    return frames


def send_frames(sock: zmq.Socket, frames: Sequence[Any], block: bool = False) -> None:
    """Queue one multipart message; without `block` raises zmq.Again when the peer's queue is full.

    bytes go by zmq's copy (the cheapest way for headers); other buffers (tensors) without a copy
    of our own: zmq copies those under its copy threshold and keeps a reference to larger ones.
    """
    flags = 0 if block else _NOBLOCK
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send_part(sock, frame, flags | _SNDMORE if i < last else flags, type(frame) is bytes)

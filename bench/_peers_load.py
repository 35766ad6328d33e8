"""Load generators and process accounting for bench/peers.py: v2 gRPC with N calls in flight,
JSON over HTTP from N keep-alive clients, and the CPU a server's process tree used."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np
import psutil

from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.protocols.limits import MAX_GRPC_MESSAGE_BYTES
from tandem.protocols.tensor_codec import encode_request_inputs


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (servers that fork workers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def summarize(latencies_s: list[float], ok: int, wall_s: float, rows: int) -> dict[str, float]:
    lat = np.asarray(latencies_s or [float("nan")]) * 1000.0
    return {
        "ok": ok,
        "rps": ok / wall_s if wall_s > 0 else 0.0,
        "rows_per_s": ok * rows / wall_s if wall_s > 0 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def v2_request(model: str, feeds: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    encode_request_inputs(request, feeds)
    return request


def grpc_load(
    address: str, request: pb.ModelInferRequest, inflight: int, seconds: float, server_pid: int, rows: int = 1
) -> dict[str, Any]:
    """Keep `inflight` ModelInfer calls outstanding for `seconds` (a new call as each one ends).

    Counts every status code (RESOURCE_EXHAUSTED included) and the server's CPU per answered call.
    """
    options = [("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES)]
    channel = grpc.insecure_channel(address, options=options)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    for _ in range(20):  # warm up: connection, the model's first runs
        stub.ModelInfer(request, timeout=30)
    lock = threading.Lock()
    codes: Counter = Counter()
    latencies: list[float] = []
    outstanding = [inflight]
    finished = threading.Event()
    last = [0.0]
    cpu0 = tree_cpu_s(server_pid)
    start = time.perf_counter()
    stop_at = start + seconds

    def issue() -> None:
        t0 = time.perf_counter()
        future = stub.ModelInfer.future(request, timeout=30)
        future.add_done_callback(lambda f: done(f, t0))

    def done(future: Any, t0: float) -> None:
        now = time.perf_counter()
        exc = future.exception()
        code = "OK" if exc is None else exc.code().name
        with lock:
            codes[code] += 1
            if exc is None:
                latencies.append(now - t0)
            last[0] = now
        if now < stop_at:
            issue()
            return
        with lock:
            outstanding[0] -= 1
            if outstanding[0] == 0:
                finished.set()

    for _ in range(inflight):
        issue()
    finished.wait(seconds + 120)
    cpu = tree_cpu_s(server_pid) - cpu0
    channel.close()
    ok = codes.get("OK", 0)
    result = summarize(latencies, ok, last[0] - start, rows)
    result["codes"] = dict(codes)
    result["resource_exhausted"] = codes.get("RESOURCE_EXHAUSTED", 0)
    result["server_cpu_ms_per_request"] = cpu / ok * 1000.0 if ok else None
    return result


def http_load(
    port: int, path: str, body: dict, clients: int, seconds: float, server_pid: int, rows: int = 1
) -> dict[str, Any]:
    """`clients` threads, each one keep-alive connection posting JSON back to back for `seconds`."""
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    lock = threading.Lock()
    latencies: list[float] = []
    errors: Counter = Counter()

    def post(conn: http.client.HTTPConnection) -> int:
        conn.request("POST", path, payload, headers)
        response = conn.getresponse()
        response.read()
        return response.status

    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(clients)]
    for conn in conns:
        for _ in range(5):
            post(conn)
    cpu0 = tree_cpu_s(server_pid)
    start = time.perf_counter()
    stop_at = start + seconds

    def loop(conn: http.client.HTTPConnection) -> None:
        mine: list[float] = []
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status = post(conn)
            if status == 200:
                mine.append(time.perf_counter() - t0)
            else:
                with lock:
                    errors[status] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu = tree_cpu_s(server_pid) - cpu0
    for conn in conns:
        conn.close()
    result = summarize(latencies, len(latencies), wall, rows)
    result["errors"] = dict(errors)
    result["server_cpu_ms_per_request"] = cpu / len(latencies) * 1000.0 if latencies else None
    return result

"""The hub's ModelInfer throughput from concurrent clients, beside two references measured in the same run:
a bare v2 gRPC server that answers every ModelInfer with a canned response (the transport's floor, no
model, no batching), and the hub exporting every ModelInfer span over OTLP to a collector on loopback
(what `[tracing] otlp_endpoint` costs). `hub_before` is the hub with the span recorder as it was
before OTLP export was added (no exporter check per call): issue 17's before/after on the same run.
Rounds are interleaved: the host is shared and noisy.

    python bench/hub_throughput.py --json [--threads 8] [--requests 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from _common import ROOT, add_paths, log

add_paths(ROOT / "tests")

from agent_fixtures import make_linear_softmax, make_model_dir  # noqa: E402
from tandem.cloud_hub.inference import InferenceServer  # noqa: E402
from tandem.cloud_hub.inference.tracing import Span, SpanRecorder  # noqa: E402
from tandem.edge_agent.fallback import FallbackClient  # noqa: E402
from tandem.protocols import inference_pb2 as pb  # noqa: E402
from tandem.protocols import inference_pb2_grpc as pb_grpc  # noqa: E402
from tandem.protocols.otlp import TracingConfig  # noqa: E402
from tandem.protocols.tensor_codec import encode_response_outputs  # noqa: E402


class _Canned(pb_grpc.GRPCInferenceServiceServicer):
    """The floor: decode nothing, run nothing, answer a fixed [1, 3] FP32 output."""

    def __init__(self) -> None:
        self.answer = pb.ModelInferResponse(model_name="lin", model_version="1.0.0")
        encode_response_outputs(self.answer, {"y": np.full((1, 3), 1 / 3, np.float32)})

    def ModelInfer(self, request, context):  # noqa: N802 (gRPC's naming)
        return self.answer


class _Collector:
    """An OTLP TraceService endpoint that counts the spans it is sent (opentelemetry-proto)."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        counter = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802
                n = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                with counter.lock:
                    counter.spans += n
                return trace_service_pb2.ExportTraceServiceResponse()

        self.spans = 0
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


_TRACING_LOG = logging.getLogger("tandem.cloud_hub.inference.tracing")


class _RecorderBefore(SpanRecorder):
    """SpanRecorder.finish as it was before the OTLP exporter hook (ring + DEBUG log only)."""

    def finish(self, name, context, parent_span_id, model, code, duration_s) -> None:  # type: ignore[override]
        span = Span(name, context, parent_span_id, model, code, duration_s)
        with self._lock:
            self._spans.append(span)
        _TRACING_LOG.debug(
            "span name=%s trace_id=%s span_id=%s parent=%s model=%s code=%s duration_ms=%.2f",
            name,
            context.trace_id,
            context.span_id,
            parent_span_id,
            model,
            code,
            duration_s * 1000.0,
        )


def throughput(address: str, threads: int, requests: int) -> float:
    """Requests per second for `requests` ModelInfer calls spread over `threads` clients (one channel each)."""
    x = np.ones((1, 4), np.float32)
    per = requests // threads
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with FallbackClient(address, deadline_ms=10_000) as client:
                client.infer("lin", {"x": x}, device_id="bench", model_version="1.0.0")  # connect
                barrier.wait()
                for _ in range(per):
                    client.infer("lin", {"x": x}, device_id="bench", model_version="1.0.0")
        except BaseException as exc:  # reported after the join
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}")
    return per * threads / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000, help="ModelInfer calls per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(make_linear_softmax(Path(tmp) / "lin.onnx"), Path(tmp) / "lin", name="lin")
        collector = _Collector()
        canned = grpc.server(futures.ThreadPoolExecutor(64), maximum_concurrent_rpcs=64)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Canned(), canned)
        canned_port = canned.add_insecure_port("127.0.0.1:0")
        canned.start()
        hub = InferenceServer([model_dir], port=0)
        before = InferenceServer([model_dir], port=0)
        traced = InferenceServer(
            [model_dir], port=0, tracing=TracingConfig(otlp_endpoint=f"http://127.0.0.1:{collector.port}")
        )
        hub.start()
        before.start()
        before.servicer.spans = _RecorderBefore()
        traced.start()
        targets = {
            "grpc_floor": f"127.0.0.1:{canned_port}",
            "hub_before": before.address,
            "hub": hub.address,
            "hub_otlp": traced.address,
        }
        rates: dict[str, list[float]] = {name: [] for name in targets}
        try:
            for r in range(args.rounds):
                for name, address in targets.items():
                    rates[name].append(throughput(address, args.threads, args.requests))
                    log(f"round {r + 1} {name}: {rates[name][-1]:.0f} req/s")
        finally:
            hub.stop()
            before.stop()
            traced.stop()  # flushes the spans still queued
            canned.stop(0)
            time.sleep(0.5)
            collector.server.stop(0)
    median = {name: statistics.median(v) for name, v in rates.items()}
    report = {
        "threads": args.threads,
        "requests_per_mode_and_round": args.requests,
        "rounds": args.rounds,
        "req_per_s_median": {k: round(v, 1) for k, v in median.items()},
        "req_per_s_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "hub_over_grpc_floor": round(median["hub"] / median["grpc_floor"], 3),
        "hub_over_hub_before": round(median["hub"] / median["hub_before"], 3),
        "hub_otlp_over_hub": round(median["hub_otlp"] / median["hub"], 3),
        "spans_exported": collector.spans,
    }
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

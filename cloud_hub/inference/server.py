"""The hub's v2 gRPC server: loads model directories, serves them, sheds overload fast.

Two servers behind one face (`server`): "threads" (default: grpc.server with a pool of
`workers` threads; tiny models run in the handler's thread) and "aio"
(cloud_hub/inference/aio.py: one event loop, tiny models inline, awaited batches).
bench/peers.py measured the threaded one ahead on a 2-core host (digits, 64 in flight, two
runs at load 18-28: 1.2-2.3x the aio server's throughput at 0.68-0.83x its CPU per request; aio
ahead in some repetitions at 1 and 16 in flight only), hence the default. Profiled (py-spy) at 64
in flight, the aio loop thread is ~90% busy: a third inside grpc.aio's own call machinery (two
tasks per call; each completion crosses from grpc's poller thread to the loop through a socket
pair), 14-21% waking the selector, 20-35% our handler with the model. Overload is bounded
twice: past `max_concurrent_rpcs` calls in flight a caller is told RESOURCE_EXHAUSTED
(the aio server adds `grpc-retry-pushback-ms`), and each model's micro-batcher refuses
work beyond `max_queue`; nothing waits in an unbounded queue. With `tls`, clients must
present a certificate the fleet CA signed; the gate (cloud_hub/inference/gate.py)
refuses revoked ones, pins a device's requests to its certificate's CN and rate-limits
each device.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import grpc

from tandem.cloud_hub.errors import ConfigError
from tandem.cloud_hub.inference.admission import Admission
from tandem.cloud_hub.inference.gate import AioClientCertGate, CertPolicy, ClientCertGate
from tandem.cloud_hub.inference.model import BatchOptions, CloudModel, ModelDirError, load_cloud_model
from tandem.cloud_hub.inference.health import add_health_and_reflection
from tandem.cloud_hub.inference.unsupported import UnsupportedMethods
from tandem.cloud_hub.inference.servicer import DEFAULT_INLINE_MAX_US, InferenceServicer, InferenceStats
from tandem.cloud_hub.pki import RevocationList
from tandem.cloud_hub.ratelimit import RateLimiter
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.protocols import limits
from tandem.protocols.limits import MAX_GRPC_MESSAGE_BYTES
from tandem.protocols.otlp import OtlpExporter, TracingConfig, TracingError, exporter_for
from tandem.protocols.tls import TlsFiles, grpc_server_credentials, warn_plain_text

log = logging.getLogger(__name__)

SERVER_KINDS = ("aio", "threads")
# Calls held at once: apart from any thread pool, so 64 clients in flight are served, not refused.
DEFAULT_MAX_CONCURRENT_RPCS = 256
# The threaded server's pool: two batches' worth of handlers (max_batch 8), so one batch runs while the
# next forms. 64 threads only added GIL contention: bench at 64 digits calls in flight, 16 vs 64 workers
# (load 15-17): 0.90-1.46x the throughput at 0.73-0.95x the CPU per request; 8 workers starved the
# batched OCR classifier (0.70-0.97x).
DEFAULT_WORKERS = 16


class InferenceServer:
    """Serve the cloud models of compiled model directories over the KServe v2 gRPC protocol.

    Each directory is served under its manifest name with the variant the compiler
    chose for `hub_profile`, or the one named in `variants` (manifest name -> variant
    id). `aliases` let clients ask by another name, e.g. the edge model's.
    """

    def __init__(
        self,
        model_dirs: Sequence[Path | str] | Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
        max_queue: int = 128,
        max_batch: int = 8,
        batch_window_ms: float = 1.0,
        hub_profile: str = "cpu-x86",
        aliases: Mapping[str, str] | None = None,
        variants: Mapping[str, str] | None = None,
        threads: int | None = None,
        allow_non_finite: bool = False,
        max_request_s: float = 30.0,
        trusted_key: Any = None,
        tls: TlsFiles | None = None,
        device_rate_per_s: float = limits.DEVICE_INFER_PER_S,
        device_burst: int = limits.DEVICE_INFER_BURST,
        tracing: TracingConfig | None = None,
        server: str = "threads",
        workers: int = DEFAULT_WORKERS,
        inline_max_us: float = DEFAULT_INLINE_MAX_US,
        openvino_async: bool = True,
        openvino_streams: int = 0,
    ) -> None:
        dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
        if not dirs:
            raise ConfigError("model_dirs: give at least one compiled model directory to serve")
        if max_concurrent_rpcs < 1 or max_queue < 1 or max_batch < 1 or batch_window_ms < 0:
            raise ConfigError("max_concurrent_rpcs, max_queue and max_batch must be >= 1 and batch_window_ms >= 0")
        if server not in SERVER_KINDS:
            raise ConfigError(f"grpc.server: {server!r} is not one of {', '.join(SERVER_KINDS)}")
        if workers < 1 or inline_max_us < 0 or openvino_streams < 0:
            raise ConfigError("grpc.workers must be >= 1, grpc.inline_max_us and grpc.openvino_streams >= 0")
        self.model_dirs = [Path(d) for d in dirs]
        self.host = host
        self.requested_port = port
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.batch = BatchOptions(
            max_batch=max_batch,
            window_ms=batch_window_ms,
            max_queue=max_queue,
            openvino_async=openvino_async,
            openvino_streams=openvino_streams,
        )
        self.hub_profile = hub_profile
        self.aliases = dict(aliases or {})
        self.variants = dict(variants or {})
        self.threads = threads
        self.allow_non_finite = allow_non_finite
        self.max_request_s = max_request_s
        self.trusted_key = trusted_key  # ed25519 public key: serve only manifests it signed
        self.tls = tls  # mutual TLS (server cert + the CA clients must be signed by + CRL)
        self.device_rate_per_s = device_rate_per_s
        self.device_burst = device_burst
        self.tracing = tracing  # [tracing] otlp_endpoint: ModelInfer spans also go to an OTLP collector
        self.server_kind = server
        self.workers = workers
        self.inline_max_us = inline_max_us
        self.admission: Admission | None = None  # the aio server's calls in flight
        self._aio: Any = None  # AioServerThread while the aio server runs
        self._exporter: OtlpExporter | None = None
        self.port: int | None = None
        self.servicer: InferenceServicer | None = None
        self.health: Any = None  # grpc_health HealthServicer while serving
        self._server: grpc.Server | None = None
        self._models: dict[str, CloudModel] = {}
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        """host:port to dial (valid after `start`)."""
        if self.port is None:
            raise RuntimeError("InferenceServer.address: call start() first")
        return _host_port(self.host, self.port)

    @property
    def models(self) -> dict[str, CloudModel]:
        return dict(self._models)

    def start(self) -> int:
        """Load the models, bind and start serving; returns the bound port."""
        if self._server is not None or self._aio is not None:
            raise RuntimeError("InferenceServer.start: already started")
        try:
            self._load_models()
            self.servicer = InferenceServicer(
                self._models,
                self.aliases,
                allow_non_finite=self.allow_non_finite,
                max_request_s=self.max_request_s,
                inline_max_us=self.inline_max_us,
            )
        except ValueError as exc:  # a bad alias; ModelDirError is not a ValueError
            self._close_models()
            raise ConfigError(f"aliases: {exc}") from exc
        except BaseException:
            self._close_models()
            raise
        try:
            self._exporter = exporter_for(self.tracing, "tandem-hub")
        except TracingError as exc:
            self._close_models()
            raise ConfigError(str(exc)) from exc
        self.servicer.spans.exporter = self._exporter
        policy = None
        if self.tls is not None:
            crl = RevocationList(self.tls.crl, self.tls.ca) if self.tls.crl is not None else None
            policy = CertPolicy(crl, RateLimiter(self.device_rate_per_s, self.device_burst))
        address = _host_port(self.host, self.requested_port)
        if self.tls is None:
            warn_plain_text("inference server", f"grpc://{address}")
        try:
            port = (
                self._start_aio(policy, address) if self.server_kind == "aio" else self._start_threads(policy, address)
            )
        except BaseException:
            self._release()
            raise
        if not port:
            self._release()
            raise ConfigError(
                f"grpc.port (env TANDEM_HUB_GRPC_PORT): cannot listen on {address} (in use, or not an address of "
                "this machine); give another with --grpc-port, 0 for any free port"
            )
        self.port = port
        log.info(
            "inference server listening on %s:%d server=%s models=%s aliases=%s max_concurrent_rpcs=%d",
            self.host,
            port,
            self.server_kind,
            ",".join(self._models),
            self.aliases,
            self.max_concurrent_rpcs,
        )
        return port

    def _bind(self, server: Any, address: str) -> int:
        """Add the listening port (plain or mutual TLS); 0 when it cannot be bound."""
        try:
            if self.tls is None:
                return int(server.add_insecure_port(address))
            return int(server.add_secure_port(address, grpc_server_credentials(self.tls)))
        except RuntimeError as exc:
            log.debug("bind failed: %s", exc)
            return 0

    def _start_threads(self, policy: CertPolicy | None, address: str) -> int:
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="hub-grpc"),
            interceptors=[ClientCertGate(policy)] if policy is not None else [],
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
            options=_OPTIONS,
        )
        assert self.servicer is not None
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        server.add_generic_rpc_handlers((UnsupportedMethods(),))  # Triton's methods we lack: UNIMPLEMENTED, why
        self.health = add_health_and_reflection(server, self.servicer)
        port = self._bind(server, address)
        if port:
            server.start()
            self._server = server
        return port

    def _start_aio(self, policy: CertPolicy | None, address: str) -> int:
        from tandem.cloud_hub.inference.aio import AioInferenceServicer, AioServerThread

        assert self.servicer is not None
        self.admission = Admission(self.max_concurrent_rpcs)
        runner = AioServerThread()
        self._aio = runner
        port = runner.start(
            AioInferenceServicer(self.servicer, self.admission),
            interceptors=[AioClientCertGate(policy)] if policy is not None else [],
            options=_OPTIONS,
            bind=lambda server: self._bind(server, address),
            health_names=[*self.servicer.models, *self.servicer.aliases],
        )
        self.health = runner.health
        return port

    def _release(self) -> None:
        """Undo a start that failed: the loop thread, the models, the exporter."""
        runner, self._aio = self._aio, None
        if runner is not None:
            runner.stop(0)
        self._close_models()
        if self._exporter is not None:
            self._exporter.close()
            self._exporter = None

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting RPCs, let in-flight ones finish for up to `grace` seconds, free the models."""
        server, self._server = self._server, None
        runner, self._aio = self._aio, None
        if self.servicer is not None and (server is not None or runner is not None):
            self.servicer.ready = False
        if server is not None:
            if self.health is not None:
                self.health.enter_graceful_shutdown()  # Watch streams see NOT_SERVING before the port closes
            server.stop(grace).wait(grace + 5.0)
        if runner is not None:
            runner.stop(grace)
        if server is not None or runner is not None:
            log.info("inference server on %s:%s stopped", self.host, self.port)
        exporter, self._exporter = self._exporter, None
        if exporter is not None:
            exporter.close()  # sends the spans still queued
        self._close_models()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until `stop` is called (from another thread or a signal handler)."""
        return self._stopped.wait(timeout)

    def stats(self) -> InferenceStats:
        if self.servicer is None:
            return InferenceStats()
        return self.servicer.stats()

    def __enter__(self) -> "InferenceServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _load_models(self) -> None:
        for model_dir in self.model_dirs:
            model = load_cloud_model(
                model_dir,
                hub_profile=self.hub_profile,
                batch=self.batch,
                threads=self.threads,
                variant_id=self._variant_for(model_dir),
                trusted_key=self.trusted_key,
                # models that run inline also run on one ONNX Runtime thread (no pool spinning beside gRPC)
                single_thread_below_s=self.inline_max_us / 1e6,
            )
            if model.name in self._models:
                model.close()
                raise ModelDirError(
                    f"{model_dir}: model {model.name!r} is already served from "
                    f"{self._models[model.name].model_dir}; serve one directory per model"
                )
            self._models[model.name] = model

    def _variant_for(self, model_dir: Path) -> str | None:
        if not self.variants:
            return None
        from tandem.protocols.manifest import load_manifest  # cheap: a small JSON file

        try:
            name = load_manifest(model_dir).name
        except Exception:
            return None  # load_cloud_model reports the manifest problem with its path
        return self.variants.get(name)

    def _close_models(self) -> None:
        models, self._models = self._models, {}
        for model in models.values():
            model.close()


_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),  # a port already in use must fail, not be shared
]


def _host_port(host: str, port: int) -> str:
    """host:port, with an IPv6 literal in brackets as gRPC expects."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def serve_forever(server: InferenceServer, stop: threading.Event | None = None) -> None:
    """Start `server` (if needed) and block until `stop` is set or the server is stopped; then stop it."""
    if server.port is None:
        server.start()
    try:
        while not server.wait(0.5):
            if stop is not None and stop.is_set():
                break
    finally:
        server.stop()

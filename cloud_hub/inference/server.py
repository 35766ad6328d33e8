"""The hub's v2 gRPC server: loads model directories, serves them, sheds overload fast.

Overload is bounded twice: gRPC's `maximum_concurrent_rpcs` answers RESOURCE_EXHAUSTED
as soon as that many RPCs are in flight, and each model's micro-batcher refuses work
beyond `max_queue`; nothing waits in an unbounded queue.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import grpc

from cloud_hub.errors import ConfigError
from cloud_hub.inference.model import BatchOptions, CloudModel, ModelDirError, load_cloud_model
from cloud_hub.inference.servicer import InferenceServicer, InferenceStats
from protocols import inference_pb2_grpc as pb_grpc
from protocols.limits import MAX_GRPC_MESSAGE_BYTES

log = logging.getLogger(__name__)


class InferenceServer:
    """Serve the cloud models of compiled model directories over the KServe v2 gRPC protocol.

    Each directory is served under its manifest name with the variant the compiler
    chose for `hub_profile`, or the one named in `variants` (manifest name -> variant
    id). `aliases` let clients ask by another name, e.g. the edge model's.
    """

    def __init__(self, model_dirs: Sequence[Path | str] | Path | str, *, host: str = "127.0.0.1", port: int = 0,
                 max_concurrent_rpcs: int = 64, max_queue: int = 128, max_batch: int = 8,
                 batch_window_ms: float = 1.0, hub_profile: str = "cpu-x86",
                 aliases: Mapping[str, str] | None = None, variants: Mapping[str, str] | None = None,
                 threads: int | None = None, allow_non_finite: bool = False, max_request_s: float = 30.0,
                 trusted_key: Any = None) -> None:
        dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
        if not dirs:
            raise ConfigError("model_dirs: give at least one compiled model directory to serve")
        if max_concurrent_rpcs < 1 or max_queue < 1 or max_batch < 1 or batch_window_ms < 0:
            raise ConfigError("max_concurrent_rpcs, max_queue and max_batch must be >= 1 and batch_window_ms >= 0")
        self.model_dirs = [Path(d) for d in dirs]
        self.host = host
        self.requested_port = port
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.batch = BatchOptions(max_batch=max_batch, window_ms=batch_window_ms, max_queue=max_queue)
        self.hub_profile = hub_profile
        self.aliases = dict(aliases or {})
        self.variants = dict(variants or {})
        self.threads = threads
        self.allow_non_finite = allow_non_finite
        self.max_request_s = max_request_s
        self.trusted_key = trusted_key  # ed25519 public key: serve only manifests it signed
        self.port: int | None = None
        self.servicer: InferenceServicer | None = None
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
        if self._server is not None:
            raise RuntimeError("InferenceServer.start: already started")
        try:
            self._load_models()
            self.servicer = InferenceServicer(self._models, self.aliases, allow_non_finite=self.allow_non_finite,
                                              max_request_s=self.max_request_s)
        except ValueError as exc:  # a bad alias; ModelDirError is not a ValueError
            self._close_models()
            raise ConfigError(f"aliases: {exc}") from exc
        except BaseException:
            self._close_models()
            raise
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.max_concurrent_rpcs, thread_name_prefix="hub-grpc"),
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),  # a port already in use must fail, not be shared
            ],
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        try:
            port = server.add_insecure_port(_host_port(self.host, self.requested_port))
        except RuntimeError as exc:
            port = 0
            log.debug("bind failed: %s", exc)
        if not port:
            self._close_models()
            raise ConfigError(f"grpc: cannot listen on {_host_port(self.host, self.requested_port)} "
                              "(in use, or not an address of this machine)")
        server.start()
        self._server = server
        self.port = port
        log.info("inference server listening on %s:%d models=%s aliases=%s max_concurrent_rpcs=%d",
                 self.host, port, ",".join(self._models), self.aliases, self.max_concurrent_rpcs)
        return port

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting RPCs, let in-flight ones finish for up to `grace` seconds, free the models."""
        server, self._server = self._server, None
        if server is not None:
            if self.servicer is not None:
                self.servicer.ready = False
            server.stop(grace).wait(grace + 5.0)
            log.info("inference server on %s:%s stopped", self.host, self.port)
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
            model = load_cloud_model(model_dir, hub_profile=self.hub_profile, batch=self.batch, threads=self.threads,
                                     variant_id=self._variant_for(model_dir), trusted_key=self.trusted_key)
            if model.name in self._models:
                model.close()
                raise ModelDirError(f"{model_dir}: model {model.name!r} is already served from "
                                    f"{self._models[model.name].model_dir}; serve one directory per model")
            self._models[model.name] = model

    def _variant_for(self, model_dir: Path) -> str | None:
        if not self.variants:
            return None
        from protocols.manifest import load_manifest  # cheap: a small JSON file

        try:
            name = load_manifest(model_dir).name
        except Exception:
            return None  # load_cloud_model reports the manifest problem with its path
        return self.variants.get(name)

    def _close_models(self) -> None:
        models, self._models = self._models, {}
        for model in models.values():
            model.close()


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

"""What `tandem-agent check` asks the fallback hub before a device goes live: does it serve the model this
agent will ask for? A hub that answers NOT_FOUND would fail every fallback, so check calls it a
configuration error and names the models the hub does serve and the two ways to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from tandem.edge_agent.errors import ConfigError
from tandem.edge_agent.fallback import channel_options, parse_target
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.protocols.tls import TlsConfigError, TlsFiles, grpc_channel_credentials

__all__ = ["HubProbe", "probe_hub_model"]


@dataclass(frozen=True)
class HubProbe:
    """status: "ok" (the hub serves `model`), "not_found" (it does not: a configuration error) or
    "unreachable" (no answer now: the agent would run degraded, not misconfigured)."""

    status: str
    url: str
    model: str
    detail: str
    served: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "url": self.url,
            "model": self.model,
            "detail": self.detail,
            "served": list(self.served),
        }


def probe_hub_model(url: str, model: str, tls: TlsFiles | None = None, timeout_s: float = 5.0) -> HubProbe:
    """Ask the hub at `url` (fallback.hub_url) for ModelMetadata of `model` (what fallbacks will name)."""
    target, secure = parse_target(url)
    if tls is not None:
        try:
            credentials: grpc.ChannelCredentials | None = grpc_channel_credentials(tls)
        except (TlsConfigError, OSError) as exc:
            raise ConfigError(f"fallback tls: {exc}") from exc
    else:
        credentials = grpc.ssl_channel_credentials() if secure else None
    options = channel_options()
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(target, options=options)
    )
    with channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=timeout_s)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code != grpc.StatusCode.NOT_FOUND:
                return HubProbe("unreachable", url, model, f"{code.name}: {details}")
            served = _served(stub, timeout_s)
            return HubProbe("not_found", url, model, _not_found_message(url, model, served, details), served)
    return HubProbe("ok", url, model, f"hub at {url} serves {model!r}")


def _served(stub: pb_grpc.GRPCInferenceServiceStub, timeout_s: float) -> tuple[str, ...]:
    """The hub's model names (RepositoryIndex); () when it does not say."""
    try:
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return ()
    return tuple(sorted({m.name for m in index.models if m.name}))


def _not_found_message(url: str, model: str, served: tuple[str, ...], details: str) -> str:
    pair = served[0] if len(served) == 1 else "<one of them>"
    serves = f"hub at {url} serves {', '.join(served)}" if served else f"hub at {url} answered NOT_FOUND ({details})"
    return (
        f"fallback: the hub does not serve {model!r}, the model this agent asks it for; {serves}. "
        f'Set [fallback] hub_model = "{pair}" in the agent config, or start the hub with --alias {model}={pair}'
    )

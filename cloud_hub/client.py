"""A small synchronous client for the hub's REST API (used by the CLI, tests and the simulator)."""

from __future__ import annotations

import io
import os
import ssl
import tarfile
from pathlib import Path
from typing import Any

import httpx

from tandem.cloud_hub.errors import HubError
from tandem.protocols.http_errors import describe_connection_error, describe_refusal

DEFAULT_URL = "http://127.0.0.1:8080"


class HubClientError(HubError):
    """The hub answered with an error, or could not be reached; `status` is the HTTP code (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class HubClient:
    """`ca` (env TANDEM_HUB_CA): the PEM that verifies an https:// hub, e.g. `<tls_dir>/ca.crt`; None: the
    system trust store."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30.0, ca: str | Path | None = None
    ) -> None:
        self.url = (url or os.environ.get("TANDEM_HUB_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("TANDEM_HUB_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ca = ca or os.environ.get("TANDEM_HUB_CA") or None
        self._ca, self._token_given = ca, bool(token)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=trust_context(ca))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "HubClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded JSON (None for 204) or raise HubClientError."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:  # one line naming the URL and the fix (protocols/http_errors.py)
            raise HubClientError(
                "cannot reach the hub at " + describe_connection_error(self.url, exc, self._ca)
            ) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except (ValueError, AttributeError):
                detail = response.text
            if not isinstance(detail, str):
                detail = str(detail)
            if response.status_code in (401, 403):
                message = describe_refusal(self.url, method, path, response.status_code, detail, self._token_given)
                raise HubClientError(message, response.status_code)
            raise HubClientError(f"{method} {path}: HTTP {response.status_code}: {detail}", response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/healthz")

    def info(self) -> dict[str, Any]:
        return self.request("GET", "/v1/hub")

    def release_key(self) -> dict[str, Any]:
        return self.request("GET", "/v1/keys/release")

    def register_model_dir(self, model_dir: str | Path) -> dict[str, Any]:
        """Upload a compiled model directory as a .tar.gz (POST /v1/models)."""
        model_dir = Path(model_dir)
        if not (model_dir / "manifest.json").is_file():
            raise HubClientError(f"{model_dir}: no manifest.json here; is this a directory written by tandem-compile?")
        return self.request(
            "POST", "/v1/models", content=tar_gz_dir(model_dir), headers={"Content-Type": "application/gzip"}
        )

    def list_models(self, name: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self.request("GET", "/v1/models", params=_params(name=name, limit=limit, offset=offset))

    def list_versions(self, name: str, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self.request("GET", f"/v1/models/{name}/versions", params=_params(limit=limit, offset=offset))

    def manifest(self, name: str, version: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/models/{name}/versions/{version}/manifest")

    def list_variants(self, **filters: Any) -> dict[str, Any]:
        return self.request("GET", "/v1/variants", params=_params(**filters))

    def list_devices(
        self,
        status: str | None = None,
        profile: str | None = None,
        tags: list[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        params = _params(status=status, profile=profile, limit=limit, offset=offset)
        params["tag"] = list(tags or [])
        return self.request("GET", "/v1/devices", params=params)

    def register_device(self, device_id: str, profile: str, agent_version: str, **fields: Any) -> dict[str, Any]:
        return self.request(
            "POST",
            "/v1/devices",
            json={"device_id": device_id, "profile": profile, "agent_version": agent_version, **fields},
        )

    def heartbeat(self, device_id: str, **fields: Any) -> dict[str, Any]:
        return self.request("POST", f"/v1/devices/{device_id}/heartbeat", json=fields)

    def list_tokens(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/tokens")

    def create_token(self, name: str, scope: str, device_id: str | None = None) -> dict[str, Any]:
        body = {"name": name, "scope": scope, **({"device_id": device_id} if device_id is not None else {})}
        return self.request("POST", "/v1/tokens", json=body)

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/tokens/{token_id}")


def trust_context(ca: str | Path | None) -> ssl.SSLContext:
    """Verify servers against `ca` (a PEM file), or the system trust store without one."""
    if ca is None:
        return ssl.create_default_context()
    path = Path(ca)
    if not path.is_file():
        raise HubClientError(f"--ca / TANDEM_HUB_CA: {path} does not exist (the hub's CA is <tls_dir>/ca.crt)")
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise HubClientError(f"--ca / TANDEM_HUB_CA: {path} is not a PEM certificate ({exc})") from exc


def tar_gz_dir(directory: Path) -> bytes:
    """The directory's contents as a gzip'd tar with paths relative to it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buf.getvalue()


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}

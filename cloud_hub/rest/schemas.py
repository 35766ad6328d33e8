"""Request and response bodies of the REST console (pydantic), one place for the API's shapes."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tandem.cloud_hub.telemetry.schemas import GapStatsOut

T = TypeVar("T")


class StrictIn(BaseModel):
    """Base of every request body: an unknown field is a 422 naming it, never silently dropped
    (`{"selct": ...}` must not become "the whole fleet")."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    detail: str


class Page(BaseModel, Generic[T]):
    """A page of a list: `total` counts all matches, `items` holds `limit` from `offset`."""

    items: list[T]
    total: int
    limit: int
    offset: int
    note: str | None = None


class Health(BaseModel):
    status: str = Field(description="ok, or degraded while a problem below holds (still HTTP 200: the hub serves)")
    schema_version: int | None = Field(description="the hub store's schema version; None while its database is away")
    telemetry_gaps: GapStatsOut | None = None  # windows missing end to end (open, lost); None without telemetry
    problems: list[str] = Field(
        default_factory=list, description="what is wrong now, e.g. a store that cannot be written (disk full)"
    )


class TensorInfoOut(BaseModel):
    name: str
    dtype: str = Field(description="numpy dtype string, e.g. <f4")
    shape: list[int]


class HardExampleOut(BaseModel):
    """One stored hard example's header (its tensors' bytes come from the .npz download)."""

    model_config = ConfigDict(extra="allow")

    device_id: str
    id: int = Field(description="the example's id on its device")
    model: str
    version: str
    label: int | None
    confidence: float | None
    source: str | None
    request_id: str | None
    created_at: float | None
    received_at: float
    tensors: list[TensorInfoOut]
    bytes: int = Field(description="size of the stored tensors")


class HubInfo(BaseModel):
    http_url: str | None
    grpc_url: str | None
    mqtt_url: str | None
    broker: str | None
    release_key_id: str
    devices: dict[str, int]


class ReleaseKeyOut(BaseModel):
    alg: str
    key_id: str
    public_key_pem: str


class DeviceIn(StrictIn):
    device_id: str = Field(..., max_length=128, examples=["cam-0001"])
    profile: str = Field(..., max_length=64, examples=["cpu-x86"])
    agent_version: str = Field(..., min_length=1, max_length=64, examples=["0.1.0"])
    tags: dict[str, str] = Field(default_factory=dict, examples=[{"site": "lyon"}])
    model_name: str | None = Field(None, max_length=128)
    model_version: str | None = Field(None, max_length=32)


class HeartbeatIn(StrictIn):
    model_name: str | None = Field(None, max_length=128)
    model_version: str | None = Field(None, max_length=32)
    agent_version: str | None = Field(None, max_length=64)


class DeviceOut(BaseModel):
    device_id: str
    profile: str
    agent_version: str
    tags: dict[str, str]
    model_name: str | None
    model_version: str | None
    registered_at: float
    last_seen: float
    status: str


class ModelSummary(BaseModel):
    name: str
    versions: int
    latest_version: str
    updated_at: float


class FileOut(BaseModel):
    path: str
    sha256: str
    size: int


class ModelVersionOut(BaseModel):
    name: str
    version: str
    content_sha256: str
    created_at: str
    registered_at: float
    size_bytes: int
    files: list[FileOut] | None = None


class RegisterOut(BaseModel):
    name: str
    version: str
    created: bool
    content_sha256: str


class VariantOut(BaseModel):
    model: str
    version: str
    variant_id: str
    runtime: str
    precision: str
    profiles: list[str]
    size_bytes: int


class TokenIn(StrictIn):
    name: str = Field(..., max_length=64, examples=["ci"])
    scope: str = Field(..., examples=["operate"])
    device_id: str | None = Field(None, max_length=128, description="the device a 'device'-scope token belongs to")


class TokenOut(BaseModel):
    token_id: str
    name: str
    scope: str
    device_id: str | None = None
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    revoked: bool


class NewTokenOut(TokenOut):
    token: str = Field(..., description="shown once; the hub keeps only its sha256")


Manifest = dict[str, Any]

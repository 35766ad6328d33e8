"""Health (no auth), hub info and the release key agents trust."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse

from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Hub, get_hub, require
from tandem.cloud_hub.rest.schemas import Health, HubInfo, ReleaseKeyOut
from tandem.cloud_hub.storage.db import DatabaseError

router = APIRouter()


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    """A browser pointed at the hub lands on the console page (it asks for a token; /docs still works)."""
    return RedirectResponse("/console/")


@router.get("/healthz", response_model=Health, tags=["system"])
def healthz(hub: Hub = Depends(get_hub)) -> Health:
    """Liveness for load balancers and `tandem-hub serve` scripts; needs no token."""
    telemetry = getattr(hub, "telemetry", None)
    watch = getattr(hub, "broker_watch", None)
    problems = ([watch.problem] if watch is not None and watch.problem else []) + _store_problems(hub)
    gaps, schema_version = None, None
    try:
        schema_version = hub.db.schema_version()
        if telemetry is not None and getattr(telemetry, "gaps", None) is not None:
            gaps = telemetry.gaps.stats()
    except DatabaseError as exc:  # PostgreSQL down or restarting: say so (200, degraded), not a 500
        problems.insert(0, f"database unreachable: {exc}")
    return Health(
        status="degraded" if problems else "ok",
        schema_version=schema_version,
        telemetry_gaps=gaps,
        problems=problems,
    )


def _store_problems(hub: Hub) -> list[str]:
    """Ingest stores that cannot be written now (disk full, locked): what they wait on, not what is lost."""
    telemetry = getattr(hub, "telemetry", None)
    ingests = (
        ("telemetry store", getattr(telemetry, "ingest", None), "windows"),
        ("hard-example store", getattr(hub, "hard_examples", None), "hard examples"),
    )
    now = time.time()
    out = []
    for name, ingest, what in ingests:
        error, since = getattr(ingest, "write_error", None), getattr(ingest, "write_error_since", None)
        if error:
            fix = (
                "bring the database back, or end the session holding a lock on it (pg_locks)"
                if "DatabaseUnavailableError" in error
                else "free space under the data dir"
            )
            out.append(
                f"{name} cannot be written for {now - (since or now):.0f}s ({error}); {what} wait unacknowledged "
                f"in the broker until it can ({fix})"
            )
    return out


@router.get(
    "/v1/hub",
    response_model=HubInfo,
    tags=["system"],
    responses=AUTH_RESPONSES,
    dependencies=[Depends(require("read"))],
)
def hub_info(hub: Hub = Depends(get_hub)) -> HubInfo:
    """Where the hub's services listen and a count of devices."""
    urls = hub.urls()
    return HubInfo(
        http_url=urls.get("http"),
        grpc_url=urls.get("grpc"),
        mqtt_url=urls.get("mqtt"),
        broker=hub.broker_kind,
        release_key_id=hub.key.key_id,
        devices=hub.devices.counts(),
    )


@router.get(
    "/v1/keys/release",
    response_model=ReleaseKeyOut,
    tags=["system"],
    responses=AUTH_RESPONSES,
    dependencies=[Depends(require("device"))],
)
def release_key(hub: Hub = Depends(get_hub)) -> ReleaseKeyOut:
    """The public ed25519 key every manifest this hub serves is signed with."""
    return ReleaseKeyOut(alg="ed25519", key_id=hub.key.key_id, public_key_pem=hub.key.public_pem)

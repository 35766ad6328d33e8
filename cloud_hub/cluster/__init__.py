"""Hub replicas on one database: a lease for the fleet's singletons, fencing tokens, shared telemetry.

`start_cluster(hub)` is what `Hub.start()` runs on a replica ([cluster] enabled); the rest is the
machinery: `LeaseTable` (the row), `LeaseKeeper` (the loop), `Fence` (the epoch check in writes),
`HubCluster` (what runs where), `ReplicaTelemetryService` (ingest everywhere, drift on the leader).
"""

from __future__ import annotations

from typing import Any

from tandem.cloud_hub.cluster.fence import Fence, FencedOut
from tandem.cloud_hub.cluster.keeper import LeaseKeeper, LeaseTiming
from tandem.cloud_hub.cluster.lease import LeaseState, LeaseTable
from tandem.cloud_hub.cluster.replica import replica_id_of
from tandem.cloud_hub.cluster.singletons import LEASE_NAME, HubCluster

__all__ = [
    "LEASE_NAME",
    "Fence",
    "FencedOut",
    "HubCluster",
    "LeaseKeeper",
    "LeaseState",
    "LeaseTable",
    "LeaseTiming",
    "replica_id_of",
    "start_cluster",
]


def start_cluster(hub: Any) -> HubCluster:
    """Start a replica's lease loop (after HTTP: rollouts need its URL) and serve GET /v1/cluster."""
    from tandem.cloud_hub.cluster.routes import router

    cfg = hub.config.cluster
    app = hub.app
    if not any(getattr(r, "path", "") == "/v1/cluster" for r in app.routes):
        app.include_router(router)
        app.openapi_schema = None
    service = HubCluster(hub.replica_id, LeaseTiming(ttl_s=cfg.lease_ttl_s, renew_s=cfg.renew_s, poll_s=cfg.poll_s))
    service.start(hub)
    return service

"""Hub state: the storage interface (SQLite or PostgreSQL behind `HubDatabase`) and the artifact files."""

from tandem.cloud_hub.storage.artifacts import ArtifactStore
from tandem.cloud_hub.storage.db import (
    DatabaseError,
    DatabaseUnavailableError,
    HubDatabase,
    Migration,
    Transaction,
    open_database,
)

__all__ = [
    "ArtifactStore",
    "DatabaseError",
    "DatabaseUnavailableError",
    "HubDatabase",
    "Migration",
    "Transaction",
    "open_database",
]

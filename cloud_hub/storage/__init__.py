"""Hub state on disk: the SQLite database and the content-addressed artifact files."""

from cloud_hub.storage.artifacts import ArtifactStore
from cloud_hub.storage.db import HubDatabase, Migration, open_database

__all__ = ["ArtifactStore", "HubDatabase", "Migration", "open_database"]

"""Hub state on disk: the SQLite database and the content-addressed artifact files."""

from tandem.cloud_hub.storage.artifacts import ArtifactStore
from tandem.cloud_hub.storage.db import HubDatabase, Migration, open_database

__all__ = ["ArtifactStore", "HubDatabase", "Migration", "open_database"]

"""A replica's name: cluster.replica_id, or <hostname>-<pid> (unique per running process, readable in logs)."""

from __future__ import annotations

import os
import re
import socket
from typing import Any

__all__ = ["replica_id_of"]


def replica_id_of(cluster: Any) -> str:
    """The configured id, or <hostname>-<pid> with anything outside [A-Za-z0-9._-] turned into '-'."""
    if cluster.replica_id:
        return str(cluster.replica_id)
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:48] or "hub"
    return f"{host}-{os.getpid()}"

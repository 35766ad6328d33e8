"""The hub's REST console (FastAPI): `create_app(hub)`."""

from tandem.cloud_hub.rest.app import create_app

__all__ = ["create_app"]

"""Tandem: edge-plus-cloud hybrid inference. One installed namespace, `tandem.*`.

The repository keeps one top-level folder per package (edge_agent/, cloud_hub/, ...);
setup.py maps each to `tandem.<name>`, so `pip install tandem` adds only `tandem`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("tandem")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]

"""What the system tests need from outside Python's reach (Mosquitto, Chromium, LiteRT, ...),
and the one rule for going without it: locally such a test skips and says what is missing;
with TANDEM_REQUIRE_ALL=1 (CI sets it in .ci/run) tests/conftest.py turns that skip into a
failure, so CI cannot go green having run none of them."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_ALL_ENV = "TANDEM_REQUIRE_ALL"

# A skip whose reason says one of these is a missing dependency (the wording of `missing()`,
# of pytest.importorskip, and of the fixtures' "mosquitto not installed" style).
DEPENDENCY_MARKERS = ("missing dependency", "not installed", "could not import")


def require_all() -> bool:
    """True when every dependency must be present (CI)."""
    return os.environ.get(REQUIRE_ALL_ENV, "") not in ("", "0")


def is_dependency_skip(reason: str) -> bool:
    lowered = reason.lower()
    return any(marker in lowered for marker in DEPENDENCY_MARKERS)


def missing(what: str, how: str) -> str:
    """The skip reason for a missing dependency: what is absent and how to get it."""
    return f"missing dependency: {what} ({how})"


def require_module(name: str, how: str = "make test installs the dev extras") -> ModuleType:
    """Import `name`, or skip the calling module (at collection) or test, naming how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(missing(name, f"{how}; {type(exc).__name__}: {exc}"), allow_module_level=True)

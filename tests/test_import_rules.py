"""DESIGN.md's import directions, checked on the source: a device installs the agent
alone, so edge_agent must never pull in the compiler or the hub."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"protocols", "hardware_profiles", "model_compiler", "edge_agent", "cloud_hub", "sim"}
ALLOWED = {
    "protocols": set(),
    "hardware_profiles": set(),
    "model_compiler": {"protocols", "hardware_profiles"},
    "edge_agent": {"protocols", "hardware_profiles"},
    "cloud_hub": {"protocols", "hardware_profiles", "model_compiler"},
    "sim": OURS - {"sim"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_design_allows(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(path) - ALLOWED[package] - {package}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    assert not offenders, "\n".join(offenders)


def test_topic_prefix_lives_in_one_file():
    holders = [p.relative_to(ROOT).as_posix() for pkg in OURS for p in (ROOT / pkg).rglob("*.py")
               if "tandem/v1/" in p.read_text(encoding="utf-8")]
    assert len(holders) <= 1, f"'tandem/v1/' appears in {holders}; topics belong in protocols/topics.py"

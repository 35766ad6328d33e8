"""DESIGN.md's import directions, checked on the source: a device installs the agent
alone, so edge_agent must never pull in the compiler or the hub."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"protocols", "hardware_profiles", "tasks", "model_compiler", "edge_agent", "cloud_hub", "sim"}
ALLOWED = {
    "protocols": set(),
    "hardware_profiles": set(),
    "tasks": set(),
    "model_compiler": {"protocols", "hardware_profiles", "tasks"},
    "edge_agent": {"protocols", "hardware_profiles", "tasks"},
    "cloud_hub": {"protocols", "hardware_profiles", "tasks", "model_compiler"},
    "sim": OURS - {"sim"},
}


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports (`from tandem import x` counts as `tandem.x`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "tandem":
                found |= {f"tandem.{alias.name}" for alias in node.names}
    return found


def imported_packages(path: Path) -> set[str]:
    """Our packages a file imports, by their name under the installed `tandem` namespace."""
    parts = [name.split(".") for name in _imported_modules(path)]
    return {p[1] for p in parts if len(p) > 1 and p[0] == "tandem"} & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_design_allows(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(path) - ALLOWED[package] - {package}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    assert not offenders, "\n".join(offenders)


def test_topic_prefix_lives_in_one_file():
    holders = [
        p.relative_to(ROOT).as_posix()
        for pkg in OURS
        for p in (ROOT / pkg).rglob("*.py")
        if "tandem/v1/" in p.read_text(encoding="utf-8")
    ]
    assert holders == ["protocols/topics.py"], (
        f"'tandem/v1/' appears in {holders}; topics belong in protocols/topics.py"
    )


def test_code_imports_our_packages_only_through_the_tandem_namespace():
    """A bare `import protocols` works only from a checkout; installed, there is only `tandem`."""
    offenders = []
    for folder in sorted(OURS | {"tests", "bench", "fuzz", "examples"}):
        for path in sorted((ROOT / folder).rglob("*.py")):
            bare = {name.split(".")[0] for name in _imported_modules(path)} & OURS
            if bare:
                offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bare))} outside tandem.")
    assert not offenders, "\n".join(offenders)

"""Each package's public surface is a tested list (as httpx's test_exported_members does), and the
error trees hold: protocols/ raises ContractErrors, the hub has one 503 type and no config 500."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocols", "hardware_profiles", "tasks", "model_compiler", "edge_agent", "cloud_hub", "sim")
LAZY = {"cloud_hub", "sim"}  # module __getattr__: importing them stays cheap
GENERATED = ("_pb2.py", "_pb2_grpc.py")
SCRIPTS = {"generate.py"}  # protocols/generate.py regenerates the *_pb2 files; not an importable API


@pytest.mark.parametrize("name", PACKAGES)
def test_each_package_exports_exactly_its_all(name):
    pkg = importlib.import_module(f"tandem.{name}")
    assert pkg.__all__ == sorted(pkg.__all__, key=str), f"tandem.{name}.__all__ is not sorted"
    for member in pkg.__all__:
        assert getattr(pkg, member) is not None, f"tandem.{name}.{member} does not resolve"
    if name in LAZY:
        return
    public = {n for n, v in vars(pkg).items() if not n.startswith("_") and not inspect.ismodule(v)} - {"annotations"}
    assert public == set(pkg.__all__), f"tandem.{name}: public names {sorted(public)} != __all__"


def test_the_agents_face_names_what_a_user_needs():
    import tandem.edge_agent as agent

    assert {"Agent", "AgentClient", "AgentConfig", "AgentError"} <= set(agent.__all__)


def _defined_public_names(path: Path) -> set[str]:
    """Classes, functions and constants a module defines at its top level (not what it imports)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign) and not (
            isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") in ("TypeVar",)
        ):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_") and n not in ("log", "logger")}


def _protocol_modules() -> list[Path]:
    return sorted(
        p
        for p in (ROOT / "protocols").glob("*.py")
        if not p.name.endswith(GENERATED) and p.name not in SCRIPTS and p.name != "__init__.py"
    )


@pytest.mark.parametrize("path", _protocol_modules(), ids=lambda p: p.name)
def test_every_contract_module_lists_its_public_names(path):
    module = importlib.import_module(f"tandem.protocols.{path.stem}")
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"protocols/{path.name} has no __all__"
    missing = _defined_public_names(path) - set(exported)
    assert not missing, f"protocols/{path.name}: public but not in __all__: {sorted(missing)} (or make them _private)"
    for name in exported:  # re-exports (telemetry_codec hands on its protobuf classes) must resolve
        assert hasattr(module, name), f"protocols/{path.name}: __all__ names {name}, which it lacks"


@pytest.mark.parametrize("path", _protocol_modules(), ids=lambda p: p.name)
def test_every_contract_error_is_a_contract_error_and_still_a_value_error(path):
    from tandem.protocols.errors import ContractError

    module = importlib.import_module(f"tandem.protocols.{path.stem}")
    for name, obj in vars(module).items():
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == module.__name__:
            assert issubclass(obj, ContractError) and issubclass(obj, ValueError), f"{path.name}: {name}"


def test_the_hub_has_one_503_type_and_config_errors_are_never_500():
    from tandem.cloud_hub import errors

    assert errors.ConfigError.status != 500 and issubclass(errors.ConfigError, errors.ServiceUnavailableError)
    assert issubclass(errors.BrokerError, errors.ServiceUnavailableError)
    for path in (ROOT / "cloud_hub").rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "status" for t in stmt.targets):
                        value = getattr(stmt.value, "value", None)
                        assert value != 503, (
                            f"{path.relative_to(ROOT)}: {node.name} invents a 503 (use ServiceUnavailableError)"
                        )

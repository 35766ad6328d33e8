"""Shared fixtures and the suite's rules.

Fixture modules are plugins (below), so a test names a fixture as an argument and imports
nothing for it; `from telemetry_fixtures import MOSQUITTO` style imports of plain helpers
still work (pyproject's pythonpath puts tests/, examples/digits, examples/ocr and fuzz/ on
sys.path). TANDEM_* settings from the developer's shell never reach a test, and a skip for a
missing dependency fails the run under TANDEM_REQUIRE_ALL=1 (tests/dependencies.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
from importlib import metadata
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from dependencies import REQUIRE_ALL_ENV, is_dependency_skip, require_all

pytest_plugins = ["hub_registry_fixtures", "pg_fixtures", "telemetry_fixtures", "v2_stub_fixtures", "web_fixtures"]

ROOT = Path(__file__).resolve().parents[1]

# Knobs the tests themselves read (test sizes, the strict setting); everything else named
# TANDEM_* configures the agent, hub or compiler and would change what a test exercises.
TEST_KNOBS = frozenset(
    {
        REQUIRE_ALL_ENV,
        "TANDEM_TEST_DATABASE",
        "TANDEM_TEST_OUTAGE_S",
        "TANDEM_HOSTILE_REST_N",
        "TANDEM_FUZZ_EXAMPLES",
        "TANDEM_WHEEL_CACHE",  # where `make test-wheels` put the PyPI wheels that carry real models
    }
)

_dependency_skips: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _no_tandem_settings_from_the_shell() -> Iterator[None]:
    """A developer's exported TANDEM_AGENT_* or TANDEM_HUB_* must not change what the suite runs."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("TANDEM_") and name not in TEST_KNOBS:
                mp.delenv(name)
        yield


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _enforce(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if not is_dependency_skip(reason):
        return
    _dependency_skips.append(f"{report.nodeid}: {reason}")
    if require_all():
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ALL_ENV}=1 and a dependency is missing: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    _enforce(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    report = yield
    _enforce(report)
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _dependency_skips and not require_all():
        terminalreporter.write_sep("!", f"{len(_dependency_skips)} skipped for a missing dependency", yellow=True)
        terminalreporter.write_line(
            f"CI sets {REQUIRE_ALL_ENV}=1, which fails these; `make test` installs what they need."
        )


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """edge.onnx, cloud.onnx, calib/val/test.npz from examples/digits/train.py, a fresh copy per session.

    Training is the costliest set-up of the suite and `make test` runs pytest three times, so the models
    are trained once per checkout into build/test-cache (fixed seeds: the same script and libraries give
    the same models; the folder's name holds both) and copied from there."""
    import train  # examples/digits/train.py

    out = tmp_path_factory.mktemp("digits") / "digits"
    shutil.copytree(_trained_digits(train), out)
    return out


def _trained_digits(train: ModuleType) -> Path:
    versions = " ".join(
        [train.recipe_digest(), *(f"{d} {metadata.version(d)}" for d in ("numpy", "scikit-learn", "skl2onnx", "onnx"))]
    )
    cache = ROOT / "build" / "test-cache" / f"digits-{hashlib.sha256(versions.encode()).hexdigest()[:16]}"
    if train.already_trained(cache) is None:
        partial = cache.with_name(f"{cache.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        train.train(partial)
        try:
            partial.rename(cache)  # atomic: a session running beside this one sees all of it or none
        except OSError:  # that other session got there first (or left a broken folder: replace it)
            if train.already_trained(cache) is None:
                shutil.rmtree(cache, ignore_errors=True)
                partial.rename(cache)
        shutil.rmtree(partial, ignore_errors=True)
    return cache


def rapidocr_model(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.fail("rapidocr-onnxruntime is a dev dependency: run `make test` (it installs it)")
    path = Path(spec.origin).parent / "models" / name
    assert path.is_file(), f"{path} missing from the rapidocr-onnxruntime package"
    return path


@pytest.fixture(scope="session")
def ocr_cls_model() -> Path:
    """PP-OCR mobile v2 text-orientation classifier (opset 11, input [N,3,48,192])."""
    return rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")


@pytest.fixture(scope="session")
def ocr_det_model() -> Path:
    """PP-OCRv4 text detection (input [N,3,H,W], H and W multiples of 32)."""
    return rapidocr_model("ch_PP-OCRv4_det_infer.onnx")


@pytest.fixture(scope="session")
def ocr_rec_model() -> Path:
    """PP-OCRv4 text recognition, CTC (input [N,3,48,W], output [N,W/8,6625] step probabilities)."""
    return rapidocr_model("ch_PP-OCRv4_rec_infer.onnx")

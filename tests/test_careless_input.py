"""Careless input at the CLIs: a bad number or a reserved name is one line naming it, never a
traceback and never a silently odd result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "101", "lots"])
def test_compile_refuses_a_meaningless_accuracy_budget(value):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.model_compiler.cli",
            "m.onnx",
            "--profiles",
            "cpu-x86",
            "--max-accuracy-drop",
            value,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "--max-accuracy-drop" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "flag",
    [
        "--dense-threshold=1.5",
        "--fallback-budget=-0.1",
        "--calib-samples=0",
        "--reference-threshold=nan",
        "--expires-days=-3",
    ],
)
def test_compile_refuses_other_out_of_range_numbers(flag):
    done = subprocess.run(
        [sys.executable, "-m", "tandem.model_compiler.cli", "m.onnx", "--profiles", "cpu-x86", flag],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2 and flag.split("=")[0] in done.stderr and "Traceback" not in done.stderr


def test_pki_issue_validates_days_and_refuses_reserved_names(tmp_path, capsys):
    from tandem.cloud_hub.cli import main

    root = ["--dir", str(tmp_path / "pki")]
    assert main(["pki", "init", *root]) == 0
    for days in ("-1", "0", "99999"):
        assert main(["pki", "issue", "cam-1", "--days", days, *root]) == 1
        err = capsys.readouterr().err
        assert "validity must be 1 to 3650 days" in err and "Traceback" not in err
    assert not (tmp_path / "pki" / "devices" / "cam-1").exists()  # nothing half-issued
    for name in ("localhost", "LOCALHOST", "127.0.0.1", "hub", "printer.local"):
        assert main(["pki", "issue", name, *root]) == 1
        assert "reserved" in capsys.readouterr().err
    assert main(["pki", "issue", "cam-1", "--days", "30", *root]) == 0


def test_hub_data_is_private_whatever_the_umask(tmp_path):
    import os
    import stat

    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    old = os.umask(0)
    try:
        hub = Hub(
            HubConfig.from_keys(
                {
                    "data_dir": tmp_path / "data",
                    "http.port": 0,
                    "grpc.port": 0,
                    "mqtt.broker": "mosquitto",
                    "telemetry.enabled": True,
                    "rollouts.enabled": False,
                }
            )
        ).start()
        try:
            hub.tokens.create("admin", "admin")
            modes = {
                p: stat.S_IMODE(p.lstat().st_mode)
                for p in [tmp_path / "data", *(tmp_path / "data").rglob("*")]
                if not p.is_symlink() and not p.is_socket()
            }
        finally:
            hub.stop()
    finally:
        os.umask(old)
    loose = {str(p): oct(m) for p, m in modes.items() if m & 0o077}
    assert not loose, loose
    assert any(p.name == "mosquitto.conf" for p in modes) and any(p.suffix == ".sqlite" for p in modes)


def _tiny_inputs(tmp_path: Path) -> tuple[Path, Path]:
    import numpy as np

    from agent_fixtures import make_linear_softmax

    model = make_linear_softmax(tmp_path / "lin.onnx", n_in=4, n_out=3)
    bad = tmp_path / "calib.npz"
    np.savez(bad, x=np.ones((8, 5), np.float32))  # 5 features: the model takes 4
    return model, bad


def test_a_failed_compile_leaves_nothing_behind_and_an_unwritable_out_is_one_line(tmp_path):
    model, bad = _tiny_inputs(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.model_compiler.cli",
            str(model),
            "--profiles",
            "cpu-x86",
            "--calib",
            str(bad),
            "--val",
            str(bad),
            "--out",
            str(out),
            "--no-timing",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*")), list(tmp_path.iterdir())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.model_compiler.cli",
            str(model),
            "--profiles",
            "cpu-x86",
            "--calib",
            str(bad),
            "--val",
            str(bad),
            "--out",
            "/proc/tandem-out",
            "--no-timing",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 3, (
        done.stderr
    )

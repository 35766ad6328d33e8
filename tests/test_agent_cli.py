"""tandem-agent as an operator uses it: run from a TOML file, infer from the shell, stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from agent_fixtures import make_model_dir

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def _lines_until_ready(proc: subprocess.Popen, timeout_s: float = 60.0) -> list[str]:
    """stderr lines up to the ready line; never blocks past timeout_s on an agent that stays silent."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "tandem-agent: serving" in line:
                found.set()
                return
        found.set()  # EOF: the agent exited

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout_s), f"no ready line within {timeout_s}s: {lines}"
    assert lines, f"the agent exited with {proc.poll()} and printed nothing"
    return lines


@pytest.fixture(scope="module")
def model_dir(digits_dir, tmp_path_factory):
    return make_model_dir(digits_dir / "edge.onnx", tmp_path_factory.mktemp("model") / "digits")


@pytest.mark.slow
def test_run_infer_and_stop_from_the_shell(model_dir, digits_dir, tmp_path):
    sock = tmp_path / "agent.sock"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[model]\ndir = "{model_dir}"\n[server]\nendpoint = "ipc://{sock}"\n'
        f'[policy]\nthreshold = 0.5\n[hard_examples]\ndata_dir = "state"\n[trust]\nallow_unsigned = true\n'
    )
    env = dict(os.environ, TANDEM_AGENT_SERVER_DEVICE_ID="shell-dev", TANDEM_AGENT_HEALTH_HTTP_PORT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.edge_agent.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        before = _lines_until_ready(proc)  # log lines (the allow_unsigned warning) come before the ready line
        assert "serving digits 1.0.0" in before[-1], before
        assert any("unsigned" in line for line in before[:-1]), before  # allow_unsigned is said out loud
        x = np.load(digits_dir / "test.npz")["x"][:3].astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        done = cli("infer", "--input", str(tmp_path / "x.npy"), "--endpoint", f"ipc://{sock}", "--json")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["source"] == "edge" and len(answer["labels"]) == 3 and answer["threshold"] == 0.5
        text = cli("infer", "--input", str(tmp_path / "x.npy"), "--endpoint", f"ipc://{sock}")
        assert "row 2: label" in text.stdout and "source edge" in text.stdout
        bad = np.zeros((1, 10), np.float32)
        np.save(tmp_path / "bad.npy", bad)
        refused = cli("infer", "--input", str(tmp_path / "bad.npy"), "--endpoint", f"ipc://{sock}")
        assert refused.returncode == 1 and "shape [1, 10]" in refused.stderr
        assert (tmp_path / "state" / "hard_examples.sqlite").exists()  # relative data_dir: next to the config
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            proc.stdout.close()
            proc.stderr.close()
    assert not sock.exists(), "the ipc socket file should be removed on stop"


def test_infer_with_no_agent_says_so(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    done = cli(
        "infer", "--input", str(tmp_path / "x.npy"), "--endpoint", f"ipc://{tmp_path}/none.sock", "--timeout", "0.3"
    )
    assert done.returncode == 1 and "no answer from the agent" in done.stderr


def test_check_reports_the_variant_and_bad_configs_name_the_key(model_dir, tmp_path):
    done = cli(
        "check", "--model-dir", str(model_dir), "--json", env=dict(os.environ, TANDEM_AGENT_TRUST_ALLOW_UNSIGNED="true")
    )  # the folder is unsigned
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["variant"] == "ort-fp32"
    bad = tmp_path / "bad.toml"
    bad.write_text(f'model.dir = "{model_dir}"\n[batch]\nmax_batch = 0\n')
    done = cli("check", "--config", str(bad))
    assert done.returncode == 2 and "batch.max_batch" in done.stderr
    env = dict(os.environ, TANDEM_AGENT_FALLBACK_DEADLINE_MS="soon")
    done = cli("check", "--model-dir", str(model_dir), env=env)
    assert done.returncode == 2 and "fallback.deadline_ms (from TANDEM_AGENT_FALLBACK_DEADLINE_MS)" in done.stderr


def test_help_lists_the_commands():
    done = cli("--help")
    assert done.returncode == 0
    for word in ("run", "check", "infer", "TANDEM_AGENT_"):
        assert word in done.stdout


def test_run_help_lists_every_config_key_and_the_sample_has_each():
    import re

    from tandem.edge_agent.config import SECTIONS

    done = cli("run", "--help")
    assert done.returncode == 0
    sample = (Path(__file__).resolve().parents[1] / "examples" / "agent" / "agent.toml").read_text()
    # the sample's text under each [section] header, up to the next one (keys may be commented out)
    parts = re.split(r"^\[([a-z_]+)\]\s*$", sample, flags=re.M)
    by_section = dict(zip(parts[1::2], parts[2::2]))
    for section, keys in SECTIONS.items():
        assert f"[{section}]" in done.stdout
        line = next(text for text in done.stdout.split("  [")[1:] if text.startswith(f"{section}]"))
        assert section in by_section, f"examples/agent/agent.toml lacks [{section}]"
        for key in keys:
            assert re.search(rf"\b{key}\b", line), f"{section}.{key}"
            assert re.search(rf"^#?\s*{key}\s*=", by_section[section], re.M), (
                f"examples/agent/agent.toml lacks {key} in [{section}]"
            )

"""The README's tour and docs/security.md's TLS walkthrough are contracts: their ```bash blocks run, in
order, as a newcomer types them (tests/readme_tour.py says the convention).

The blocks run in one bash shell in a fresh folder laid out like a checkout (the repo's .venv linked,
examples/ and bench/ copied), with HOME there (a new publisher key) and nothing TANDEM_* inherited.
Ports move only through the variables the README names (TANDEM_HUB_HTTP_PORT, ..._GRPC_PORT,
..._MQTT_PORT, TANDEM_AGENT_HEALTH_HTTP_PORT), sockets through XDG_RUNTIME_DIR. Real parts throughout:
tandem-compile, Mosquitto started by the hub, gRPC, ZeroMQ, SQLite, the OTA download and switch.

One stand-in, said here: out/digits is filled from the session's `digits_dir` (examples/digits/train.py's
own train(), which writes its recipe digest), so the tour's train step finds this recipe's models and
keeps them instead of spending another minute or more retraining identical, seeded models.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from readme_tour import section_blocks, steps, tour_script

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TOUR_TIMEOUT_S = 900
README_SECTION = "## A short tour"
SECURITY_SECTION = "### Walkthrough: a TLS hub and one device on this machine"
# The variables README.md names for moving the tour's ports (docs/security.md's walkthrough says the same).
PORT_VARS = ("TANDEM_HUB_HTTP_PORT", "TANDEM_HUB_GRPC_PORT", "TANDEM_HUB_MQTT_PORT", "TANDEM_AGENT_HEALTH_HTTP_PORT")


def _free_port(taken: set[int]) -> int:
    """A free port below the kernel's ephemeral range (32768+), as the tour's own 8080/8001/1883/9464 are:
    a port bind(0) hands out can be taken in the meantime as the local end of some client connection
    (seen here: the TLS hub's broker refused such a port as in use, on a busy host, about half the time)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        if port in taken:
            continue
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


def _checkout(root: Path, digits_dir: Path) -> None:
    """A folder that looks like a fresh clone after `make`: .venv, examples/, bench/, and (see above) out/digits."""
    (root / ".venv").symlink_to(REPO / ".venv")
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "bench", root / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(digits_dir, root / "out" / "digits")


def _tour_env(root: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update({name: str(port) for name, port in ports.items()})
    env["HOME"] = str(root / "home")
    env["XDG_RUNTIME_DIR"] = str(root / "run")
    env.pop("XDG_STATE_HOME", None)
    (root / "home").mkdir(exist_ok=True)
    (root / "run").mkdir(mode=0o700, exist_ok=True)
    return env


def _stop_leftovers(proc: subprocess.Popen, pids_file: Path) -> list[int]:
    """Whatever the tour left running (it should be nothing): stopped, and reported."""
    left = []
    pids = [int(p) for p in pids_file.read_text().split()] if pids_file.exists() else []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        left.append(pid)
        os.kill(pid, signal.SIGTERM)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for pid in left:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    return left


def run_tour(root: Path, script: str, env: dict[str, str], pids_file: Path) -> tuple[int, str, list[int]]:
    (root / "tour.sh").write_text(script)
    proc = subprocess.Popen(
        ["bash", "tour.sh"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TOUR_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop_leftovers(proc, pids_file)
        out, _ = proc.communicate()
        out += f"\nTOUR: timed out after {TOUR_TIMEOUT_S}s"
    left = _stop_leftovers(proc, pids_file)
    return proc.returncode, out, left


def _failed_step(output: str) -> str:
    marks = [line for line in output.splitlines() if line.startswith("TOUR STEP")]
    return marks[-1] if marks else "(before the first step)"


@dataclass(frozen=True)
class TourRun:
    root: Path
    ports: dict[str, int]
    rc: int
    out: str
    left: list[int]

    def detail(self, *logs: str) -> str:
        texts = {name: (self.root / name).read_text(errors="replace") for name in logs if (self.root / name).exists()}
        return f"failed at {_failed_step(self.out)}\n--- output ---\n{self.out[-6000:]}\n" + "".join(
            f"--- {name} (tail) ---\n{text[-2500:]}\n" for name, text in texts.items()
        )

    def assert_clean(self, *logs: str) -> None:
        """Every step ran, nothing left running, no daemon log holds a traceback."""
        assert self.rc == 0 and "TOUR DONE" in self.out, self.detail(*logs)
        assert not self.left, f"the tour left daemons running (pids {self.left}):\n{self.detail(*logs)}"
        for name in logs:
            assert "Traceback" not in (self.root / name).read_text(errors="replace"), self.detail(*logs)


def _ports() -> dict[str, int]:
    taken: set[int] = set()
    return {name: _free_port(taken) for name in PORT_VARS}


def walk(root: Path, doc: str, heading: str, ports: dict[str, int]) -> TourRun:
    tour = steps(section_blocks((REPO / doc).read_text(), heading))
    pids = root / f".pids-{Path(doc).stem}"
    rc, out, left = run_tour(root, tour_script(tour, str(pids)), _tour_env(root, ports), pids)
    return TourRun(root, ports, rc, out, left)


@pytest.fixture(scope="module")
def readme_tour(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> TourRun:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (make test installs it): the tour's hub needs it")
    root = tmp_path_factory.mktemp("tour")
    _checkout(root, digits_dir)
    return walk(root, "README.md", README_SECTION, _ports())


def test_readme_tour_runs_as_written(readme_tour: TourRun) -> None:
    run, root, ports = readme_tour, readme_tour.root, readme_tour.ports
    run.assert_clean("agent.log", "hub.log", "cam-017.log")
    out = run.out

    # What a newcomer is told they will see, seen.
    assert '"kept": true' in out, "the train step should find the recipe's models (see the module docstring)"
    assert out.count("row 0: label") == 2, f"both agents answer the tour's digit:\n{out}"
    assert "cam-017" in out.split("tandem-hub devices list", 1)[1], f"devices list shows the joined device:\n{out}"
    assert "registered: digits-edge 1.1.0" in out
    rollout = out.split("tandem-hub ota rollout start", 1)[1]
    assert "digits-edge 1.1.0" in rollout and "cam-017" in rollout, f"the rollout targets cam-017:\n{rollout}"

    # The joined agent's config is its own: the hub's endpoints, a socket in its data dir, no root.
    config = (root / "cam-017.toml").read_text()
    assert f'hub_url = "127.0.0.1:{ports["TANDEM_HUB_GRPC_PORT"]}"' in config
    assert f'mqtt_url = "mqtt://127.0.0.1:{ports["TANDEM_HUB_MQTT_PORT"]}"' in config
    assert f'endpoint = "ipc://{root}/cam-017-data/agent.sock"' in config
    assert oct((root / "cam-017.toml").stat().st_mode & 0o777) == "0o600"
    with socket.socket() as sock:  # the hub is gone and its REST port with it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", ports["TANDEM_HUB_HTTP_PORT"]))


def test_security_tls_walkthrough_runs_as_written(readme_tour: TourRun) -> None:
    """docs/security.md's walkthrough, after the README tour in the same folder (it uses its out/ and x.npy)."""
    if readme_tour.rc != 0:
        pytest.fail("the README tour failed first (see its test); the TLS walkthrough builds on it")
    run = walk(readme_tour.root, "docs/security.md", SECURITY_SECTION, _ports())
    run.assert_clean("hub-tls.log", "cam-018.log")
    root, ports, out = run.root, run.ports, run.out
    assert "wrote release key" in out and (root / "release.pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY")
    assert "row 0: label" in out, out
    assert "cam-018" in out.split("tandem-hub devices list", 1)[1], out
    rollout = out.split("tandem-hub ota rollout start", 1)[1]
    assert "digits-edge 1.1.0" in rollout and "cam-018" in rollout, rollout
    config = (root / "cam-018.toml").read_text()
    assert f'mqtt_url = "mqtts://127.0.0.1:{ports["TANDEM_HUB_MQTT_PORT"]}"' in config, config
    assert f'mqtt_tls_cert = "{root}/tandem-pki/devices/cam-018/client.crt"' in config, config
    assert "TLS handshake" not in (root / "cam-018.log").read_text()


if __name__ == "__main__":  # print the script the test runs, to read or to run by hand
    doc, heading = (
        ("docs/security.md", SECURITY_SECTION) if sys.argv[1:] == ["security"] else ("README.md", README_SECTION)
    )
    sys.stdout.write(tour_script(steps(section_blocks((REPO / doc).read_text(), heading)), ".pids"))

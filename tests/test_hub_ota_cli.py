"""`tandem-hub ota ...` against a real hub (its own rollout service, as `serve` runs it) on loopback,
real Mosquitto and simulated devices (real OTA client, A/B store, digits model through load_session)."""

from __future__ import annotations

import json
import time

import pytest

from tandem.cloud_hub.cli import main
from ota_fixtures import MODEL, MOSQUITTO, SimDevice, compile_digits, derive, ota_hub, scramble_golden, start_devices

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")]

N_DEVICES = 3


@pytest.fixture(scope="module")
def fleet(digits_dir, tmp_path_factory):
    from tandem.edge_agent.ota.machine import WatchPolicy

    root = tmp_path_factory.mktemp("ota-cli")
    v1 = compile_digits(digits_dir, root / "rel" / "1.0.0", "1.0.0", root / "rel" / "compiler.pem")
    releases = [
        v1,
        derive(v1, root / "rel" / "1.1.0", "1.1.0"),
        derive(v1, root / "rel" / "1.2.0", "1.2.0", scramble_golden),
    ]
    with ota_hub(root, releases, {"rollouts.tick_s": 0.1, "rollouts.watch_s": 0.6}) as env:
        hub = env.hub
        devices: list[SimDevice] = []
        try:
            tokens = {scope: hub.tokens.create(f"cli-{scope}", scope).token for scope in ("read", "operate")}
            watch = WatchPolicy(watch_s=0.6, min_requests=20, max_fallback_rise=0.3, max_latency_ratio=100.0)
            start_devices(env, devices, [f"lab-{i}" for i in range(N_DEVICES)], v1, digits_dir, watch)
            hub.devices.register("ghost-1", "cpu-x86", "test", {"site": "ghost"})  # registered, never answers
            yield hub, devices, tokens
        finally:
            for d in devices:
                d.stop()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("TANDEM_HUB_URL", raising=False)
    monkeypatch.delenv("TANDEM_HUB_TOKEN", raising=False)


def cli(capsys, hub, token: str, *argv: str) -> tuple[int, str, str]:
    code = main(["ota", *argv, "--url", hub.http_url, "--token", token])
    out, err = capsys.readouterr()
    return code, out, err


def wait_status(capsys, hub, token: str, rollout_id: str, statuses: tuple[str, ...], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        code, out, err = cli(capsys, hub, token, "status", rollout_id, "--json")
        assert code == 0, err
        body = json.loads(out)
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{rollout_id} did not reach {statuses}: {body.get('status')} {body.get('counts')}")


def wait_serving(devices: list[SimDevice], version: str, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(d.serving == version for d in devices):
            return True
        time.sleep(0.05)
    return False


def test_start_shows_status_as_table_and_json_then_rollback_returns_every_device(fleet, capsys):
    hub, devices, tokens = fleet
    op, read = tokens["operate"], tokens["read"]
    code, out, err = cli(
        capsys,
        hub,
        op,
        "rollout",
        "start",
        "--model",
        MODEL,
        "--version",
        "1.1.0",
        "--select",
        "profile=cpu-x86,site=lab",
        "--waves",
        "30,100",
        "--gate",
        "min_reporting=1.0",
        "--gate",
        "max_latency_ratio=100",
        "--gate",
        "wave_timeout_s=60",
        "--json",
    )
    assert code == 0, err
    started = json.loads(out)
    rid = started["rollout_id"]
    assert (started["model"], started["version"], started["waves"], started["devices"]) == (
        MODEL,
        "1.1.0",
        [30, 100],
        3,
    )
    assert started["gates"]["min_reporting"] == 1.0 and started["gates"]["max_latency_ratio"] == 100.0

    body = wait_status(capsys, hub, read, rid, ("completed", "halted"))
    assert body["status"] == "completed" and body["counts"] == {"committed": N_DEVICES}, body
    assert wait_serving(devices, "1.1.0")

    code, out, _ = cli(capsys, hub, read, "status")  # the list, as a table
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ROLLOUT", "MODEL", "STATUS", "WAVE", "DEVICES", "UPDATED", "REASON"]
    row = next(line for line in lines if line.startswith(rid)).split()
    assert row[1:5] == [MODEL, "1.1.0", "completed", "2/2"] and row[5] == f"committed={N_DEVICES}"

    code, out, _ = cli(capsys, hub, read, "status", rid)  # one rollout: header, devices, recent steps
    lines = out.splitlines()
    assert lines[0] == f"rollout {rid}: {MODEL} 1.1.0 — completed, wave 2 of 2 (30%, 100%)"
    assert lines[1] == f"devices: committed={N_DEVICES}"
    assert lines[3].split() == ["DEVICE", "WAVE", "STATE", "LAST", "STEP", "REASON"]
    states = {line.split()[0]: line.split()[1:3] for line in lines[4 : 4 + N_DEVICES]}
    assert set(states) == {d.device_id for d in devices} and all(s[1] == "committed" for s in states.values())
    assert sorted(s[0] for s in states.values()) == ["1", "2", "2"]  # 30% of 3 devices: one in wave 1
    assert "recent steps:" in lines and any("committed" in line for line in lines[lines.index("recent steps:") :])

    code, out, _ = cli(capsys, hub, read, "status", "--json")
    assert rid in [r["rollout_id"] for r in json.loads(out)["items"]]

    code, out, err = cli(capsys, hub, op, "rollback", rid)
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"rollout {rid}: {MODEL} 1.1.0 — rolled_back")
    assert wait_serving(devices, "1.0.0"), {d.device_id: d.serving for d in devices}
    body = wait_status(capsys, hub, read, rid, ("rolled_back",))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and body["counts"] != {"rolled_back": N_DEVICES}:
        time.sleep(0.1)
        body = wait_status(capsys, hub, read, rid, ("rolled_back",))
    assert body["counts"] == {"rolled_back": N_DEVICES}
    assert all(d.client.store.active_version == "1.0.0" for d in devices)


def test_pause_resume_abort_and_a_refused_action_on_a_rollout_waiting_for_an_offline_device(fleet, capsys):
    hub, devices, tokens = fleet
    op = tokens["operate"]
    code, out, err = cli(
        capsys,
        hub,
        op,
        "rollout",
        "start",
        "--model",
        MODEL,
        "--version",
        "1.1.0",
        "--select",
        "site=ghost",
        "--waves",
        "100",
        "--json",
    )
    assert code == 0, err
    rid = json.loads(out)["rollout_id"]
    for action, status in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        code, out, err = cli(capsys, hub, op, action, rid, "--json")
        assert code == 0, err
        assert json.loads(out)["status"] == status
    code, out, err = cli(capsys, hub, op, "pause", rid)
    assert code == 1 and out == ""
    assert "HTTP 409" in err and "only a running rollout can be paused" in err
    code, _, err = cli(capsys, hub, op, "resume", "ro-doesnotexist")
    assert code == 1 and "HTTP 404" in err
    assert {d.serving for d in devices} == {"1.0.0"}  # the lab devices were never selected


@pytest.mark.parametrize(
    "args, message",
    [
        (["--select", "profile"], "--select 'profile': expected KEY=VALUE"),
        (["--gate", "speed=3"], "--gate 'speed=3': expected KEY=VALUE with KEY one of max_failure_rate"),
        (["--gate", "max_failure_rate=lots"], "--gate max_failure_rate: 'lots' is not a float"),
        (["--gate", "auto_rollback=perhaps"], "--gate auto_rollback: 'perhaps' is not a bool"),
        (["--waves", "5,x"], "--waves '5,x': expected percentages like 5,25,100"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(fleet, capsys, args, message):
    hub, devices, tokens = fleet
    before = hub.rollouts.list()[1]
    code, out, err = cli(
        capsys,
        hub,
        tokens["operate"],
        "rollout",
        "start",
        "--model",
        MODEL,
        "--version",
        "1.1.0",
        "--select",
        "site=lab",
        *args,
    )
    assert code == 1 and out == ""
    assert err.startswith("tandem-hub: error: ") and message in err and "Traceback" not in err
    assert hub.rollouts.list()[1] == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--waves", "50,20"], "HTTP 422"),
        (["--select", "site=nowhere"], "no registered device matches"),
        (["--gate", "min_reporting=2"], "HTTP 422: body.gates.min_reporting"),
    ],
)
def test_what_the_hub_refuses_comes_back_as_its_message(fleet, capsys, args, message):
    hub, devices, tokens = fleet
    before = hub.rollouts.list()[1]
    code, out, err = cli(
        capsys,
        hub,
        tokens["operate"],
        "rollout",
        "start",
        "--model",
        MODEL,
        "--version",
        "1.1.0",
        "--select",
        "site=lab",
        *args,
    )
    assert code == 1 and message in err, err
    assert hub.rollouts.list()[1] == before


def test_an_unknown_version_and_a_missing_flag(fleet, capsys):
    hub, devices, tokens = fleet
    code, _, err = cli(capsys, hub, tokens["operate"], "rollout", "start", "--model", MODEL, "--version", "9.9.9")
    assert code == 1 and "HTTP 404" in err and "9.9.9" in err
    with pytest.raises(SystemExit) as exc:  # argparse: usage error, exit status 2
        main(["ota", "rollout", "start", "--version", "1.1.0", "--url", hub.http_url])
    assert exc.value.code == 2 and "--model" in capsys.readouterr().err
    assert main(["ota"]) == 2 and "rollout" in capsys.readouterr().out


def test_a_read_token_may_look_but_not_start_and_no_token_is_told_to_get_one(fleet, capsys):
    hub, devices, tokens = fleet
    code, _, err = cli(
        capsys, hub, tokens["read"], "rollout", "start", "--model", MODEL, "--version", "1.1.0", "--select", "site=lab"
    )
    assert code == 1
    assert "HTTP 403" in err and "has scope 'read'; this needs 'operate' or higher" in err
    code, _, err = cli(capsys, hub, tokens["read"], "abort", "ro-anything")
    assert code == 1 and "HTTP 403" in err
    assert cli(capsys, hub, tokens["read"], "status")[0] == 0
    code = main(["ota", "status", "--url", hub.http_url])
    assert code == 1 and "HTTP 401" in capsys.readouterr().err

"""tandem-sim's command line: a real run writes the report, bad input gets a clear message."""

from __future__ import annotations

import json

import pytest

from tandem.sim.cli import build_parser, main


def test_help_explains_the_run_options(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--devices" in out and "--duration" in out and "--report" in out and "tandem-sim list" in out


def test_unknown_scenario_names_the_builtin_ones(capsys, tmp_path):
    assert main(["run", "no-such-scenario", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no-such-scenario" in err and "steady" in err and "rollout_bad" in err


def test_a_bad_scenario_file_names_the_key(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nduration_s: 5\ndevices: [{profile: cpu-arm, count: 1, rate: 3}]\n")
    assert main(["run", str(path), "--workdir", str(tmp_path)]) == 2
    assert "devices[0].rate: unknown key" in capsys.readouterr().err


def test_list_shows_every_builtin_scenario(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("steady", "hub_outage", "drift", "rollout_good", "rollout_bad", "mixed", "demo"):
        assert name in out


@pytest.mark.slow
def test_run_writes_report_summary_and_plots(digits_dir, tmp_path, capsys):
    report = tmp_path / "report"
    code = main(
        [
            "run",
            "hub_outage",
            "--devices",
            "3",
            "--duration",
            "8",
            "--workdir",
            str(tmp_path / "work"),
            "--data-dir",
            str(digits_dir),
            "--report",
            str(report),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "PASS  telemetry complete" in captured.out and f"report: {report / 'report.md'}" in captured.out
    # not a terminal here: plain progress lines (no carriage returns) and every event as it happens
    assert "\033[K" not in captured.err and "t=" in captured.err and "hub outage begins" in captured.err
    summary = json.loads((report / "summary.json").read_text())
    assert summary["passed"] and summary["devices"] == 3 and summary["telemetry"]["sent"] > 0
    md = (report / "report.md").read_text()
    assert "**Outcome: PASSED**" in md and "hub outage begins" in md
    for plot in ("latency", "fallback", "drift"):
        assert (report / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({plot}.png)" in md
    assert len(json.loads((report / "timeline.json").read_text())) >= 6


def test_demo_summary_reads_for_a_newcomer():
    from tandem.sim.demo import format_summary

    text = format_summary(
        {
            "seconds": 90.0,
            "edge_report": "e/report.md",
            "cloud_report": "c/report.md",
            "fleet_report": "r/report.md",
            "variants": {"litert-int8": {"agreement": 1.0, "accuracy": 0.98, "p50_ms": 0.004, "bytes": 5000}},
            "chosen": {"npu-litert": "litert-int8"},
            "fleet": {
                "devices": 2,
                "profiles": {"npu-litert": 2},
                "variants": {"npu-litert": "litert-int8"},
                "requests": 100,
                "by_source": {"edge": 90, "cloud": 8, "edge_degraded": 2, "error": 0},
                "accuracy": 0.95,
                "telemetry": {"sent": 10, "hub": 10},
                "drift_at_s": 30.0,
                "first_alert_s": 36.5,
                "alerts": [{"signal": "input:x.mean"}],
            },
            "rollout": {"version": "1.1.0", "status": "completed", "counts": {"committed": 2}},
            "checks": [{"name": "rollout completed", "passed": True}],
        }
    )
    assert "90.0% answered on the device" in text and "answered by the hub" in text
    assert "rollout of 1.1.0: completed" in text and "drift alert at 36.5s" in text
    assert "r/report.md" in text and "tandem-sim list" in text


def test_a_failed_demo_check_says_why_in_the_printed_summary():
    """A halted rollout prints its reason and every failed check its detail (they were only in summary.json)."""
    from tandem.sim.demo import format_summary
    from tandem.sim.runner import _checks
    from tandem.sim.scenario import load_scenario

    reason = "wave 3: 1 of 20 devices failed (last: sim-npu-litert-0018: rolled_back: fallback rate 0.429 rose)"
    rollout = {
        "version": "1.1.0",
        "status": "halted",
        "reason": reason,
        "counts": {"rolled_back": 20},
        "devices_on_new": 0,
        "ota_devices": 20,
    }
    fleet = {
        "requests": 100,
        "offered": 100.0,
        "delivered_ratio": 1.0,
        "telemetry": {"hub": 10, "sent": 10, "pending": 0},
        "alerts": [{"signal": "input:x.mean", "opened_s": 36.0}],
        "drift_at_s": 30.0,
        "first_alert_s": 36.0,
        "rollout": rollout,
        "latency_p99_ms": 1.0,
    }
    checks = _checks(load_scenario("demo"), fleet)
    (failed,) = [c for c in checks if not c["passed"]]
    assert failed["name"] == "rollout completed" and reason in failed["detail"]
    text = format_summary(
        {
            "seconds": 90.0,
            "edge_report": "e/report.md",
            "cloud_report": "c/report.md",
            "fleet_report": "r/report.md",
            "variants": {},
            "chosen": {},
            "fleet": {
                "devices": 20,
                "profiles": {"npu-litert": 20},
                "variants": {"npu-litert": "litert-int8"},
                "requests": 100,
                "by_source": {"edge": 90, "cloud": 10, "edge_degraded": 0, "error": 0},
                "telemetry": {"sent": 10, "hub": 10},
            },
            "rollout": rollout,
            "checks": checks,
        }
    )
    assert f"why: {reason}" in text
    assert f"FAIL rollout completed: rollout halted; 0/20 devices on 1.1.0 ({reason})" in text

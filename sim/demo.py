"""The demo behind `tandem-sim demo` (`make demo`): Tandem's main job on one machine.

It trains the digits models, compiles them for every hardware profile, then starts a
broker and a hub on embedded defaults and runs a mixed fleet of virtual devices
(sim/scenarios/demo.yaml) through a canary rollout and a drift alert, and writes the
run's report. A few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tandem.model_compiler.pipeline import CompileOptions, CompileResult, compile_model

EDGE_PROFILES = ["cpu-x86", "cpu-arm", "gpu-cuda", "gpu-intel", "npu-intel", "npu-litert"]
CLOUD_PROFILES = ["cpu-x86"]
DEMO_SCENARIO = "demo"


def _digits_example() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "digits"))
    import train  # examples/digits/train.py

    return train


def _train_digits(out: Path) -> dict[str, float]:
    return _digits_example().train(out)


def _side_by_side(results: dict[str, CompileResult], data: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The same test digits served edge-only, cloud-only and hybrid (tandem.sim.sidebyside)."""
    import numpy as np

    from tandem.sim.sidebyside import side_by_side

    test = np.load(data / "test.npz")
    sbs = side_by_side(
        results["edge"].out,
        results["cloud"].out,
        np.ascontiguousarray(test["x"], dtype=np.float32),
        test["y"].astype(np.int64),
        say=lambda m: say(f"    {m}"),
    )
    t = sbs["targets"]
    # accuracy and fallback are deterministic (fixed seeds); the p50 ratio is shown, not checked (a busy host moves it)
    sbs["check"] = {
        "name": "hybrid: cloud >= edge + 1.5 points, hybrid within 0.3 points of cloud at <= 10% fallback",
        "passed": all(
            t[k]["met"]
            for k in ("cloud_beats_edge_by_1.5_points", "hybrid_within_0.3_points_of_cloud", "hybrid_fallback_le_0.10")
        ),
        "detail": f"gain {t['cloud_beats_edge_by_1.5_points']['points']:.2f} points, gap "
        f"{t['hybrid_within_0.3_points_of_cloud']['points']:.2f} points, fallback "
        f"{t['hybrid_fallback_le_0.10']['fraction']:.1%}",
    }
    return sbs


def run_demo(
    workdir: Path, say: Callable[[str], None] = print, progress: Callable[[str], None] = lambda m: None
) -> dict[str, object]:
    """Run every step; return a summary dict (also written to workdir/summary.json).

    `say` gets one line per step; `progress` gets the fleet's live progress line (with \\r).
    """
    from tandem.sim.releases import prepare
    from tandem.sim.report import write_report
    from tandem.sim.runner import DEFAULT_PROFILES, run_scenario
    from tandem.sim.scenario import load_scenario

    started = time.perf_counter()
    data = workdir / "digits"
    say(f"1/4 training the digits edge and cloud models into {data}")
    scores = _train_digits(data)
    say(f"    edge test accuracy {scores['edge_test_accuracy']:.3f}, cloud {scores['cloud_test_accuracy']:.3f}")

    results: dict[str, CompileResult] = {}
    for step, (name, profiles) in enumerate((("edge", EDGE_PROFILES), ("cloud", CLOUD_PROFILES)), start=2):
        say(f"{step}/4 compiling digits-{name} for {', '.join(profiles)}")
        opts = CompileOptions(
            model=data / f"{name}.onnx",
            profiles=profiles,
            calib=data / "calib.npz",
            val=data / "val.npz",
            out=workdir / "models" / f"digits-{name}",
            name=f"digits-{name}",
            signing_key=workdir / "keys" / "publisher.ed25519.pem",
            timing_seconds=0.5,
            force=True,
            fallback_budget=_digits_example().FALLBACK_BUDGET if name == "edge" else None,
        )
        results[name] = compile_model(opts, progress=lambda m: say(f"    {m}"))
    say("    the same test digits served edge-only, cloud-only and hybrid, side by side")
    sbs = _side_by_side(results, data, say)

    scenario = load_scenario(DEMO_SCENARIO)
    say(
        f"4/4 starting a broker and a hub, then {scenario.device_count} virtual devices "
        f"({', '.join(f'{g.count} {g.profile}' for g in scenario.devices)}) for {scenario.duration_s:g}s: "
        "a canary rollout, then drift"
    )
    models = prepare(workdir / "sim-models", DEFAULT_PROFILES, data, say=lambda m: say(f"    {m}"))
    result = run_scenario(scenario, workdir / "sim", models=models, progress=progress)
    report = write_report(result, workdir / "report")
    progress("\n")

    edge = results["edge"].manifest
    fleet = result.summary
    summary = {
        "workdir": str(workdir),
        "seconds": round(time.perf_counter() - started, 1),
        "edge_report": str(results["edge"].out / "report.md"),
        "cloud_report": str(results["cloud"].out / "report.md"),
        "fleet_report": str(report),
        "chosen": {p: c.chosen for p, c in edge.profiles.items()},
        "variants": {
            v.id: {
                "agreement": v.metrics.get("agreement"),
                "accuracy": v.metrics.get("accuracy"),
                "p50_ms": v.metrics.get("latency_p50_ms"),
                "bytes": v.metrics.get("file_bytes"),
            }
            for v in edge.variants
        },
        "fleet": {
            k: fleet[k]
            for k in (
                "devices",
                "profiles",
                "variants",
                "requests",
                "by_source",
                "fallback_rate",
                "degraded_rate",
                "accuracy",
                "telemetry",
                "first_alert_s",
                "drift_at_s",
                "alerts",
            )
            if k in fleet
        },
        "rollout": fleet.get("rollout"),
        "side_by_side": sbs,
        "checks": [sbs["check"], *result.checks],
        "passed": result.passed and sbs["check"]["passed"],
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def format_summary(summary: dict) -> str:
    lines = ["", "Tandem demo finished in {seconds}s.".format(**summary), ""]
    if summary.get("side_by_side"):
        from tandem.sim.sidebyside import format_side_by_side

        lines += ["What the hybrid buys:", *format_side_by_side(summary["side_by_side"]), ""]
    lines += ["The digits edge model was compiled into these variants (validated against FP32 on held-out digits):", ""]
    lines.append(f"  {'variant':28} {'agreement':>9} {'accuracy':>8} {'p50 ms':>8} {'size':>9}")
    for vid, m in summary["variants"].items():
        acc = f"{m['accuracy']:.3f}" if m.get("accuracy") is not None else "-"
        p50 = f"{m['p50_ms']:.3f}" if m.get("p50_ms") is not None else "-"
        lines.append(f"  {vid:28} {m['agreement']:9.4f} {acc:>8} {p50:>8} {m['bytes'] / 1024:8.1f}K")
    lines += ["", "Each hardware profile gets the variant that suits it:", ""]
    for profile, chosen in summary["chosen"].items():
        lines.append(f"  {profile:12} -> {chosen or 'nothing fits (see report)'}")
    fleet = summary.get("fleet")
    if fleet:
        src, tel = fleet["by_source"], fleet["telemetry"]
        n = max(fleet["requests"], 1)
        lines += [
            "",
            f"Then {fleet['devices']} virtual devices ran the real agent logic against a real hub and broker:",
            "",
        ]
        lines.append(
            "  " + ", ".join(f"{c} {p} (serving {fleet['variants'].get(p, '?')})" for p, c in fleet["profiles"].items())
        )
        lines.append(
            f"  {fleet['requests']} requests: {100 * src['edge'] / n:.1f}% answered on the device, "
            f"{100 * src['cloud'] / n:.1f}% not confident enough and answered by the hub's bigger model, "
            f"{100 * src['edge_degraded'] / n:.1f}% degraded (hub not reachable in time)"
        )
        if fleet.get("accuracy") is not None:
            lines.append(f"  accuracy of the answers the apps got: {fleet['accuracy']:.3f}")
        lost = "none lost" if tel["sent"] == tel["hub"] else f"{tel['sent'] - tel['hub']} not (yet) at the hub"
        lines.append(
            f"  telemetry: the devices sent {tel['sent']} windows in all; the hub stored {tel['hub']} ({lost})"
        )
        r = summary.get("rollout")
        if r:
            lines.append(
                f"  canary rollout of {r['version']}: {r['status']} ({r['counts']}); each device downloaded, "
                "verified the signature, self-tested, switched and watched its health"
            )
            if r.get("status") != "completed" and r.get("reason"):
                lines.append(f"    why: {r['reason']}")
        if fleet.get("drift_at_s") is not None:
            first = fleet.get("first_alert_s")
            lines.append(
                f"  drift: noise injected at {fleet['drift_at_s']:g}s; "
                + (
                    f"the hub raised a drift alert at {first:g}s "
                    f"({', '.join(sorted({a['signal'] for a in fleet['alerts']}))[:80]})"
                    if first is not None
                    else "no alert was raised"
                )
            )
        lines += [
            "",
            "  checks: " + "; ".join(f"{'PASS' if c['passed'] else 'FAIL'} {c['name']}" for c in summary["checks"]),
        ]
        # a failed check says why in the summary itself, not only in summary.json
        lines += [f"  FAIL {c['name']}: {c['detail']}" for c in summary["checks"] if not c["passed"]]
    lines += ["", f"Reports: {summary['edge_report']}", f"         {summary['cloud_report']}"]
    if summary.get("fleet_report"):
        lines.append(f"         {summary['fleet_report']}  (the fleet run, with plots)")
    lines += [
        "",
        "Next: `tandem-sim list` shows more scenarios (hub_outage, rollout_bad, ...); "
        "`tandem-sim run rollout_bad --report out/` runs one.",
        "",
    ]
    return "\n".join(lines)

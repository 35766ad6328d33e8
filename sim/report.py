"""Write a run's report: report.md (summary table, checks, events), summary.json, timeline.json, PNG plots.

Plots (matplotlib, Agg backend, no display needed): latency p50/p99, fallback and
degraded rates, drift scores against the alert threshold, rollout progress, each
over simulated time with hub outages shaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tandem.sim.runner import RunResult

log = logging.getLogger(__name__)

PLOTS = ("latency", "fallback", "drift", "rollout")


def write_report(result: RunResult, out: Path) -> Path:
    """Write everything under `out`; returns the path of report.md."""
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(result.summary, checks=result.checks, passed=result.passed)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    (out / "timeline.json").write_text(json.dumps(result.timeline, default=_jsonable))
    plots = _plots(result, out)
    (out / "report.md").write_text(render_markdown(result, plots))
    return out / "report.md"


def _jsonable(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def _fmt(v: Any, spec: str = ".3f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def render_markdown(result: RunResult, plots: list[str]) -> str:
    s = result.summary
    sc = result.scenario
    tel = s["telemetry"]
    lines = [
        f"# Tandem simulation: {s['scenario']}",
        "",
        s["description"],
        "",
        f"**Outcome: {'PASSED' if result.passed else 'FAILED'}** "
        f"({sum(c['passed'] for c in result.checks)}/{len(result.checks)} checks)",
        "",
        "| | |",
        "| --- | --- |",
        f"| devices | {s['devices']} ({', '.join(f'{n} {p}' for p, n in s['profiles'].items())}) |",
        f"| duration | {s['duration_s']:g} s, telemetry windows of {s['window_s']:g} s |",
        f"| variants served | {', '.join(f'{p}: {v}' for p, v in sorted(s['variants'].items()))} |",
        f"| requests | {s['requests']} (edge {s['by_source']['edge']}, cloud {s['by_source']['cloud']}, "
        f"degraded {s['by_source']['edge_degraded']}, errors {s['by_source']['error']}) |",
        f"| fallback rate | {100 * s['fallback_rate']:.1f}% (degraded {100 * s['degraded_rate']:.1f}%) |",
        f"| accuracy | {_fmt(s['accuracy'])} |",
        f"| latency p50 / p99 | {_fmt(s['latency_p50_ms'])} / {_fmt(s['latency_p99_ms'])} ms |",
        f"| telemetry windows | sent {tel['sent']}, stored by the hub {tel['hub']}, left in outboxes {tel['pending']} |",
        f"| drift alerts | {len(s['alerts'])}"
        + (f" (first at {s['first_alert_s']:g} s)" if s["first_alert_s"] is not None else "")
        + " |",
    ]
    if "rollout" in s:
        r = s["rollout"]
        lines.append(
            f"| rollout | {r['version']} ({r['release']}): {r['status']}"
            + (f" — {r['reason']}" if r["reason"] else "")
            + f"; devices {r['counts']} |"
        )
    if s["refused"]:
        lines.append(f"| refused models | {len(s['refused'])} device(s): {next(iter(s['refused'].values()))} |")
    lines += ["", "## Checks", ""]
    lines += [f"- {'✅' if c['passed'] else '❌'} **{c['name']}**: {c['detail']}" for c in result.checks] or ["- none"]
    lines += ["", "## Events", ""] + ([f"- {e}" for e in s["events"]] or ["- none"])
    if s["alerts"]:
        lines += [
            "",
            "## Drift alerts",
            "",
            "| signal | profile | version | opened at | state |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {a['signal']} | {a['profile']} | {a['version']} | {a['opened_s']:g} s | {a['state']} |"
            for a in s["alerts"][:30]
        ]
    lines += [
        "",
        "## Shared sessions",
        "",
        "| variant | version | devices | host ms/row | batches | rows |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {x['variant']} | {x['version']} | {x['users']} | {x['host_ms_per_row']:.4f} | {x['batches']} | "
        f"{x['rows']} |"
        for x in s["sessions"]
    ]
    if plots:
        lines += ["", "## Over time", ""] + [f"![{p}]({p}.png)" for p in plots]
    lines += ["", f"Scenario file: `{sc.source}`. Raw data: `summary.json`, `timeline.json`.", ""]
    return "\n".join(lines)


def _plots(result: RunResult, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the report stays useful without plots
        log.warning("matplotlib is not installed; the report has no plots")
        return []
    rows = result.timeline
    t = [r["t"] for r in rows]
    outage = [bool(r.get("outage")) for r in rows]
    made = []

    def figure(name: str, title: str, ylabel: str) -> tuple[Any, Any]:
        fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
        ax.set_title(title)
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel(ylabel)
        for i, on in enumerate(outage):
            if on:
                ax.axvspan(t[i] - 0.5, t[i] + 0.5, color="tab:red", alpha=0.12, lw=0)
        for e in result.scenario.events:
            ax.axvline(e.at_s, color="gray", ls=":", lw=1)
        return fig, ax

    def save(fig: Any, ax: Any, name: str) -> None:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png")
        plt.close(fig)
        made.append(name)

    fig, ax = figure("latency", "Answer latency (edge emulated + fallback round trip)", "ms")
    for key, label in (("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")):
        pts = [(x, r.get(key)) for x, r in zip(t, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=label)
    ax.set_yscale("symlog", linthresh=0.1)
    save(fig, ax, "latency")

    fig, ax = figure("fallback", "Fallback to the hub (shaded: hub outage)", "share of requests")
    for key, label in (("fallback_rate", "fallback (asked the hub)"), ("degraded_rate", "degraded (hub unreachable)")):
        pts = [(x, r.get(key)) for x, r in zip(t, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=label)
    ax.set_ylim(0, 1.05)
    save(fig, ax, "fallback")

    fig, ax = figure("drift", "Drift scores at the hub (dashed: alert thresholds)", "score")
    signals = sorted({k for r in rows for k in (r.get("drift") or {})})
    for sig in signals:
        pts = [(x, r["drift"][sig]) for x, r in zip(t, rows) if sig in (r.get("drift") or {})]
        ax.plot(*zip(*pts), label=sig)
    ax.axhline(result.scenario.drift.open_above, color="tab:red", ls="--", lw=1, label="distribution alert")
    ax.axhline(result.scenario.drift.rate_open_above, color="tab:gray", ls="--", lw=1, label="rate-rise alert")
    save(fig, ax, "drift")

    if any("rollout" in r for r in rows):
        fig, ax = figure("rollout", "Rollout progress: devices by state", "devices")
        states = sorted({k for r in rows for k in (r.get("rollout") or {}).get("counts", {})})
        for st in states:
            ax.plot(t, [(r.get("rollout") or {}).get("counts", {}).get(st, 0) for r in rows], label=st)
        save(fig, ax, "rollout")
    return made

"""Hybrid accuracy on the digits models: edge only, cloud only, and edge with fallback, over thresholds.

Trains the digits models (examples/digits/train.py, fixed seeds), compiles them
(model_compiler.pipeline), loads each edge variant the way the agent does
(edge_agent.model.load_model, the variant chosen per profile) and the cloud variant
the way the hub does (cloud_hub.inference.load_cloud_model, the hub's profile), and
scores one split with edge_agent.policy.ConfidencePolicy, the agent's own decision
code: a row the policy does not find confident takes the cloud's answer, as one
request per row does in the agent. Every policy kind is swept over thresholds; the
default (what an agent uses when its config sets none: the manifest's
task.threshold, else the policy's default) is marked.

Targets. Issue 3: at the default threshold, hybrid accuracy within 0.5 points of the
cloud's while at most 25% of requests go to the cloud. Issue 24, on the side-by-side
that leads the report (tandem.sim.sidebyside: the same requests served edge-only,
cloud-only and hybrid through the agent's loader, policy and fallback client and the
hub's inference server): cloud >= edge + 1.5 points; hybrid within 0.3 points of the
cloud with at most 10% of requests sent to the hub; hybrid p50 within 1.2x of edge-only.

Usage: python bench/hybrid.py [--json] [--profiles cpu-x86,npu-litert] [--split test]
                              [--digits-dir DIR] [--fp32] [--thresholds 0.5,0.8,0.9]
Progress goes to stderr; a table (or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests), not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, add_paths, log  # noqa: E402

add_paths(ROOT / "examples" / "digits")

from tandem.edge_agent.config import PolicyConfig  # noqa: E402
from tandem.edge_agent.policy import KINDS, ConfidencePolicy  # noqa: E402
from tandem.sim.sidebyside import (  # noqa: E402
    SIDE_BY_SIDE_PROFILE,
    format_side_by_side,
    side_by_side,
)

EDGE_PROFILES = ("cpu-x86", "cpu-arm", "gpu-cuda", "gpu-intel", "npu-intel", "npu-litert")
HUB_PROFILE = "cpu-x86"
THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999)
MAX_GAP_POINTS = 0.5
MAX_FALLBACK = 0.25
DEFAULT_KIND = PolicyConfig().kind  # the agent's default policy kind

Progress = Callable[[str], None]


# -- the pure core: outputs and labels in, accuracies and fallback fractions out --------------


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float((predicted == labels).mean()) if labels.size else float("nan")


def default_threshold(kind: str, manifest_task: dict[str, Any]) -> float:
    """The threshold an agent with no `threshold` in its config uses (edge_agent.agent.Agent._make_policy)."""
    t = manifest_task.get("threshold")
    return ConfidencePolicy(kind, float(t) if isinstance(t, (int, float)) else None).threshold


def evaluate_point(
    policy: ConfidencePolicy, edge_out: np.ndarray, cloud_out: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float]:
    """One threshold: rows the policy keeps get the edge label, the rest the cloud's (scored by the same policy)."""
    edge = policy.score_array(edge_out, threshold)
    cloud_labels = policy.score_array(cloud_out, threshold).labels
    hybrid = np.where(edge.confident, edge.labels, cloud_labels)
    fallback = float(1.0 - edge.confident.mean()) if labels.size else 0.0
    return {"threshold": float(threshold), "hybrid_accuracy": accuracy(labels, hybrid), "fallback_fraction": fallback}


def sweep(
    edge_out: np.ndarray,
    cloud_out: np.ndarray,
    labels: np.ndarray,
    *,
    manifest_task: dict[str, Any] | None = None,
    kinds: Sequence[str] = KINDS,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, Any]:
    """Edge, cloud and hybrid accuracy for every kind and threshold, the default threshold marked and judged."""
    manifest_task = manifest_task or {}
    probe = ConfidencePolicy(DEFAULT_KIND)  # labels are the argmax whatever the kind
    edge_acc = accuracy(labels, probe.score_array(edge_out, 0.0).labels)
    cloud_acc = accuracy(labels, probe.score_array(cloud_out, 0.0).labels)
    # when the edge alone is within the target's margin, the split cannot show what fallback buys
    result: dict[str, Any] = {
        "samples": int(labels.size),
        "edge_accuracy": edge_acc,
        "cloud_accuracy": cloud_acc,
        "edge_gap_to_cloud_points": (cloud_acc - edge_acc) * 100.0,
        "kinds": {},
    }
    for kind in kinds:
        policy = ConfidencePolicy(kind)
        default = default_threshold(kind, manifest_task)
        points = []
        for t in sorted(set(thresholds) | {default}):
            point = evaluate_point(policy, edge_out, cloud_out, labels, t)
            point["gap_to_cloud_points"] = (cloud_acc - point["hybrid_accuracy"]) * 100.0
            point["meets_target"] = judge(point)
            point["default"] = t == default
            points.append(point)
        meeting = [p for p in points if p["meets_target"]]
        result["kinds"][kind] = {
            "default_threshold": default,
            "default": next(p for p in points if p["default"]),
            # the cheapest threshold that meets the target on this split (in-sample: a hint, not a tuned value)
            "least_fallback_meeting_target": min(meeting, key=lambda p: (p["fallback_fraction"], p["threshold"]))
            if meeting
            else None,
            "sweep": points,
        }
    return result


def judge(point: dict[str, Any]) -> bool:
    return point["gap_to_cloud_points"] <= MAX_GAP_POINTS + 1e-9 and point["fallback_fraction"] <= MAX_FALLBACK + 1e-9


# -- the shell: train, compile, load as the agent and the hub do, run ------------------------


@dataclass
class Outputs:
    variant: str
    runtime: str
    precision: str
    profiles: list[str]
    task: dict[str, Any]
    probabilities: np.ndarray


def compile_digits(digits: Path, work: Path, edge_profiles: Sequence[str], say: Progress) -> tuple[Path, Path]:
    """As the tour and the demo do: the edge model's threshold fitted for the example's fallback budget."""
    import train  # examples/digits/train.py

    from tandem.model_compiler.pipeline import CompileOptions, compile_model

    dirs = {}
    for name, profiles in (("edge", list(edge_profiles)), ("cloud", [HUB_PROFILE])):
        say(f"compiling digits-{name} for {', '.join(profiles)}")
        opts = CompileOptions(
            model=digits / f"{name}.onnx",
            profiles=profiles,
            calib=digits / "calib.npz",
            val=digits / "val.npz",
            out=work / f"digits-{name}",
            name=f"digits-{name}",
            signing_key=work / "keys" / "release-ed25519.pem",
            timing_seconds=0.5,
            force=True,
            fallback_budget=train.FALLBACK_BUDGET if name == "edge" else None,
        )
        dirs[name] = compile_model(opts, progress=lambda m: None).out
    return dirs["edge"], dirs["cloud"]


def run_rows(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """All rows through the session, in the chunks it accepts (a fixed batch axis: its size); the first output."""
    from tandem.model_compiler.validate import run_dataset

    return np.asarray(run_dataset(session, feeds)[0], dtype=np.float32)


def edge_outputs(model_dir: Path, profiles: Sequence[str], x: np.ndarray, say: Progress) -> list[Outputs]:
    """Each distinct variant the profiles get, loaded by the agent's own loader."""
    from tandem.edge_agent.model import load_model
    from tandem.protocols.manifest import load_manifest

    manifest = load_manifest(model_dir)
    by_variant: dict[str, list[str]] = {}
    for profile in profiles:
        choice = manifest.profiles.get(profile)
        if choice is None or choice.chosen is None:
            say(f"profile {profile}: no variant ({choice.reason if choice else 'not compiled'})")
            continue
        by_variant.setdefault(choice.chosen, []).append(profile)
    found = []
    for variant_id, users in by_variant.items():
        model = load_model(model_dir, users[0], variant_id)
        try:
            say(f"edge {variant_id} ({', '.join(users)}): {len(x)} rows")
            probs = run_rows(model.session, model.runtime_feeds({model.input_specs[0].name: x}))
        finally:
            model.close()
        found.append(
            Outputs(variant_id, model.variant.runtime, model.variant.precision, users, dict(manifest.task), probs)
        )
    return found


def cloud_outputs(model_dir: Path, x: np.ndarray, say: Progress) -> Outputs:
    from tandem.cloud_hub.inference.model import load_cloud_model

    model = load_cloud_model(model_dir, hub_profile=HUB_PROFILE)
    try:
        say(f"cloud {model.variant.id} (hub profile {HUB_PROFILE}): {len(x)} rows")
        probs = run_rows(model.session, {model.session.inputs[0].name: x})
    finally:
        model.close()
    return Outputs(
        model.variant.id,
        model.variant.runtime,
        model.variant.precision,
        [HUB_PROFILE],
        dict(model.manifest.task),
        probs,
    )


def fp32_outputs(digits: Path, x: np.ndarray) -> tuple[list[Outputs], Outputs]:
    """The trained ONNX files themselves, through the same runtime adapter (no compile)."""
    from tandem.hardware_profiles.runtimes import load_session

    outs = []
    for name in ("edge", "cloud"):
        session = load_session("onnxruntime", digits / f"{name}.onnx")
        try:
            outs.append(
                Outputs(f"{name}.onnx", "onnxruntime", "fp32", [], {}, run_rows(session, {session.inputs[0].name: x}))
            )
        finally:
            session.close()
    return [outs[0]], outs[1]


def run(
    digits: Path,
    work: Path,
    *,
    profiles: Sequence[str] = EDGE_PROFILES,
    split: str = "test",
    fp32: bool = False,
    thresholds: Sequence[float] = THRESHOLDS,
    side: bool = True,
    say: Progress = log,
) -> dict[str, Any]:
    """The whole benchmark on a folder written by examples/digits/train.py; returns the JSON report."""
    data = np.load(digits / f"{split}.npz")
    x, y = np.ascontiguousarray(data["x"], dtype=np.float32), data["y"].astype(np.int64)
    if fp32:
        edges, cloud = fp32_outputs(digits, x)
    else:
        edge_dir, cloud_dir = compile_digits(digits, work, profiles, say)
        edges, cloud = edge_outputs(edge_dir, profiles, x, say), cloud_outputs(cloud_dir, x, say)
    report: dict[str, Any] = {}
    if not fp32 and side and SIDE_BY_SIDE_PROFILE in profiles:
        report["side_by_side"] = side_by_side(edge_dir, cloud_dir, x, y, say=say)
    report |= {
        "split": split,
        "samples": int(y.size),
        "one_sample_points": 100.0 / max(1, y.size),
        "agent_default_kind": DEFAULT_KIND,
        "max_gap_points": MAX_GAP_POINTS,
        "max_fallback_fraction": MAX_FALLBACK,
        "cloud": {
            "variant": cloud.variant,
            "runtime": cloud.runtime,
            "precision": cloud.precision,
            "profile": HUB_PROFILE if not fp32 else None,
        },
        "edges": [],
    }
    targets: dict[str, Any] = {}
    for edge in edges:
        result = sweep(edge.probabilities, cloud.probabilities, y, manifest_task=edge.task, thresholds=thresholds)
        report["edges"].append(
            {
                "variant": edge.variant,
                "runtime": edge.runtime,
                "precision": edge.precision,
                "profiles": edge.profiles,
                "manifest_threshold": edge.task.get("threshold"),
                **result,
            }
        )
        point = result["kinds"][DEFAULT_KIND]["default"]
        targets[edge.variant] = {
            "kind": DEFAULT_KIND,
            "threshold": point["threshold"],
            "gap_to_cloud_points": point["gap_to_cloud_points"],
            "fallback_fraction": point["fallback_fraction"],
            "met": point["meets_target"],
        }
    report["targets"] = {"default_threshold_within_0.5_points_of_cloud_with_fallback_le_0.25": targets}
    if "side_by_side" in report:
        report["targets"]["side_by_side"] = report["side_by_side"]["targets"]
    report["targets"]["met"] = all(t["met"] for t in targets.values()) and report["targets"].get(
        "side_by_side", {}
    ).get("met", True)
    return report


def print_table(report: dict[str, Any]) -> None:
    """One block per edge variant: a row per threshold, hybrid accuracy / fallback per kind; * marks the default."""
    print(
        f"split {report['split']}: {report['samples']} samples (one sample = {report['one_sample_points']:.2f} points); "
        f"cloud {report['cloud']['variant']}"
    )
    for edge in report["edges"]:
        kinds = list(edge["kinds"])
        print(
            f"\nedge {edge['variant']} ({', '.join(edge['profiles']) or 'no profile'}): edge "
            f"{edge['edge_accuracy'] * 100:.2f}%, cloud {edge['cloud_accuracy'] * 100:.2f}% "
            f"(gap {edge['edge_gap_to_cloud_points']:.2f} points)"
        )
        print(f"{'threshold':>9} " + " ".join(f"{k + ' hybrid / fallback':>28}" for k in kinds))
        rows: dict[float, dict[str, dict[str, Any]]] = {}
        for kind in kinds:
            for p in edge["kinds"][kind]["sweep"]:
                rows.setdefault(p["threshold"], {})[kind] = p
        for t in sorted(rows):
            cells = []
            for kind in kinds:
                p = rows[t].get(kind)
                cells.append(
                    f"{'':>28}"
                    if p is None
                    else f"{p['hybrid_accuracy'] * 100:14.2f}% / {p['fallback_fraction'] * 100:5.1f}%"
                    f"{'*' if p['default'] else ' '}{'ok' if p['meets_target'] else '  '}"
                )
            print(f"{t:9.3f} " + " ".join(cells))
    targets = report["targets"]
    print(
        f"\n* default threshold; ok: within {report['max_gap_points']} points of the cloud with at most "
        f"{report['max_fallback_fraction']:.0%} fallback"
    )
    for variant, t in targets["default_threshold_within_0.5_points_of_cloud_with_fallback_le_0.25"].items():
        print(
            f"target {variant}: {t['kind']} {t['threshold']:.3f}: gap {t['gap_to_cloud_points']:.2f} points, "
            f"fallback {t['fallback_fraction'] * 100:.1f}%: {'met' if t['met'] else 'NOT met'}"
        )


def parse_thresholds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"thresholds: {exc}") from exc
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"thresholds must be numbers in [0, 1], comma-separated (got {text!r})")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--profiles", default=",".join(EDGE_PROFILES), help="edge profiles whose variants to score")
    parser.add_argument("--split", default="test", choices=("val", "test"), help="the split to score (default test)")
    parser.add_argument("--digits-dir", type=Path, help="a folder from examples/digits/train.py (default: train anew)")
    parser.add_argument("--fp32", action="store_true", help="score edge.onnx and cloud.onnx directly, no compile")
    parser.add_argument(
        "--thresholds",
        type=parse_thresholds,
        default=list(THRESHOLDS),
        help="comma-separated thresholds to sweep (the default threshold is always added)",
    )
    args = parser.parse_args(argv)
    profiles = [p for p in args.profiles.split(",") if p]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-hybrid-") as tmp:
        work = Path(tmp)
        digits = args.digits_dir
        if digits is None:
            import train  # examples/digits/train.py

            log("training the digits models")
            digits = work / "digits"
            train.train(digits)
        report = run(digits, work, profiles=profiles, split=args.split, fp32=args.fp32, thresholds=args.thresholds)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        if "side_by_side" in report:
            print("\n".join(format_side_by_side(report["side_by_side"])) + "\n")
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

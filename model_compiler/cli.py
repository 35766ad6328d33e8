"""tandem-compile: a thin command line over model_compiler.pipeline."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tandem.hardware_profiles import ProfileError, load_profiles
from tandem.model_compiler.confidence import DEFAULT_HYBRID_WITHIN_POINTS, DEFAULT_REFERENCE_THRESHOLD
from tandem.model_compiler.errors import CompileError
from tandem.model_compiler.timing import DEFAULT_ROUNDS
from tandem.protocols.cli_options import add_log_level, configure_logging
from tandem.protocols.manifest import ManifestError
from tandem.protocols.signing import SignatureError

if TYPE_CHECKING:
    from tandem.tasks import TaskSpec

EPILOG = """\
examples:
  tandem-compile profiles
  tandem-compile model.onnx --profiles cpu-x86,npu-intel --calib calib.npz --val val.npz --out build/model
  tandem-compile model.onnx --profiles cpu-arm --calib c.npz --val v.npz --out out --calibration percentile --json

data files (.npz): one array per model input named like the input (a single-input model may use 'x');
validation data may add 'y' with integer labels to measure accuracy, not only agreement.

--version VERSION is the compiled model's version; `tandem-compile --version` alone prints this tool's.
--quiet silences our progress and the libraries' (NNCF, OpenVINO, tqdm/rich bars); warnings and errors stay.
"""


def _leading_log_level(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split `--log-level X` / `--log-level=X` given before a subcommand (`profiles`) from the rest."""
    lead: list[str] = []
    rest = list(argv)
    while rest and (rest[0] == "--log-level" or rest[0].startswith("--log-level=")):
        n = 1 if "=" in rest[0] else 2
        lead, rest = lead + rest[:n], rest[n:]
    return lead, rest


def _progress_printer(quiet: bool) -> Callable[[str], None]:
    start = time.perf_counter()

    def show(message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return show


def _list_profiles(args: argparse.Namespace) -> int:
    profiles = load_profiles(args.profile_dir)
    if args.json:
        print(
            json.dumps(
                {
                    name: {
                        "device_class": p.device_class,
                        "isa": p.isa,
                        "runtimes": list(p.runtime_names),
                        "precisions": list(p.precisions),
                        "model_size_budget_mb": p.model_size_budget_mb,
                        "latency_slo_ms": p.latency_slo_ms,
                        "source": p.source,
                    }
                    for name, p in profiles.items()
                },
                indent=2,
            )
        )
        return 0
    rows = [("PROFILE", "CLASS", "RUNTIMES", "PRECISIONS", "SIZE BUDGET", "DESCRIPTION")]
    for name, p in sorted(profiles.items()):
        rows.append(
            (
                name,
                p.device_class,
                ",".join(p.runtime_names),
                ",".join(p.precisions),
                f"{p.model_size_budget_mb:g} MiB",
                p.description,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    return 0


def _compile(args: argparse.Namespace) -> int:
    from tandem.model_compiler.pipeline import CompileOptions, compile_model
    from tandem.model_compiler.report import REPORT_MD, report_dict

    opts = CompileOptions(
        model=args.model,
        profiles=[p for p in args.profiles.split(",") if p.strip()],
        calib=args.calib,
        val=args.val,
        out=args.out,
        name=args.name,
        version=args.version,
        max_accuracy_drop=args.max_accuracy_drop,
        calibration_method=args.calibration,
        calib_samples=args.calib_samples,
        dense_threshold=args.dense_threshold,
        expires_days=args.expires_days,
        signing_key=args.signing_key,
        profile_dirs=list(args.profile_dir),
        timing=not args.no_timing,
        timing_rounds=args.timing_rounds,
        force=args.force,
        confidence_calibration=not args.no_confidence_calibration,
        confidence_goal=args.confidence_goal,
        fallback_budget=args.fallback_budget,
        reference_threshold=args.reference_threshold,
        cloud_model=args.cloud_model,
        hybrid_within=args.hybrid_within,
        task=_task_spec(args),
        budgets=_pairs(args.budget, "--budget", float),
        shapes=_shapes(args.shapes),
        bind=_pairs(args.bind, "--bind"),
    )
    result = compile_model(opts, progress=_progress_printer(args.quiet))
    if args.json:
        print(json.dumps(report_dict(result), indent=2, default=float))
    else:
        print((result.out / REPORT_MD).read_text(encoding="utf-8"))
        print(f"manifest: {result.out / 'manifest.json'}")
    return 0 if any(c.chosen for c in result.manifest.profiles.values()) else 3


def _pairs(items: list[str], flag: str, convert: Callable[[str], Any] = str) -> dict[str, Any]:
    """NAME=VALUE strings (repeatable flags) as a dict, refusing a malformed one by flag."""
    found: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CompileError(f"{flag} {item!r}: expected NAME=VALUE")
        try:
            found[name.strip()] = convert(value.strip())
        except ValueError as exc:
            why = f"{value.strip()!r} is not a number" if convert is float else str(exc)
            raise CompileError(f"{flag} {item!r}: {why} (expected NAME=VALUE)") from exc
    return found


def _shapes(items: list[str]) -> dict[str, list[tuple[int, ...]]]:
    """The --shapes flags as {input: [shape, ...]} (tandem.tasks.shapes.parse_shapes)."""
    from tandem.tasks.shapes import ShapeError, parse_shapes

    try:
        return parse_shapes(items)
    except ShapeError as exc:
        raise CompileError(str(exc)) from exc


def _task_spec(args: argparse.Namespace) -> TaskSpec | None:
    """The --task and --task-option flags as a task spec (None: infer it from the outputs)."""
    from tandem.tasks import TaskError, TaskSpec

    options = _pairs(args.task_option, "--task-option")
    if args.task is None:
        if options:
            raise CompileError("--task-option needs --task (the options depend on the task)")
        return None
    try:
        return TaskSpec(args.task).with_options(options)
    except TaskError as exc:
        raise CompileError(str(exc)) from exc


def number(low: float, high: float) -> "Callable[[str], float]":
    """An argparse type: a finite number in [low, high] (NaN, inf and out-of-range values are refused by name)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number from {low:g} to {high:g}")
        return value

    return parse


def whole(low: int, high: int | None = None) -> "Callable[[str], int]":
    """An argparse type: an integer >= low (and <= high)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be from {low}" + (f" to {high}" if high is not None else " up")
            )
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem-compile",
        description="Turn one ONNX model into validated, quantized variants for each hardware profile, "
        "with a signed manifest and a report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="the FP32 ONNX model, or 'profiles' to list the hardware profiles")
    parser.add_argument("--profiles", default="cpu-x86", help="comma-separated profile names (default: cpu-x86)")
    parser.add_argument("--calib", type=Path, help="calibration data (.npz) for INT8")
    parser.add_argument("--val", type=Path, help="held-out validation data (.npz), optional labels in 'y'")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--name", help="model name in the manifest (default: the file's stem)")
    parser.add_argument(
        "--version",
        default="1.0.0",
        help="model version MAJOR.MINOR.PATCH (default: 1.0.0); alone, `--version` prints tandem-compile's",
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=number(0, 100),
        default=1.0,
        help="accuracy points a chosen variant may lose against FP32 (default: 1)",
    )
    parser.add_argument(
        "--calibration",
        default="minmax",
        choices=["minmax", "percentile", "entropy"],
        help="INT8 activation range calibration (default: minmax)",
    )
    parser.add_argument(
        "--calib-samples", type=whole(1), default=256, help="at most this many calibration samples (default: 256)"
    )
    parser.add_argument(
        "--dense-threshold",
        type=number(0, 1),
        default=0.5,
        help="threshold for agreement of non-classification outputs, e.g. 0.3 for text maps (default: 0.5)",
    )
    parser.add_argument(
        "--expires-days", type=whole(0, 36500), default=365, help="manifest expiry in days, 0 for none (default: 365)"
    )
    parser.add_argument(
        "--publisher-key",
        "--signing-key",
        dest="signing_key",
        type=Path,
        help="the publisher's ed25519 PEM key that signs the manifest (default: "
        "$TANDEM_HOME/keys/publisher.ed25519.pem, ~/.tandem without TANDEM_HOME, created on first use "
        "with its public half beside it as *.pub.pem for `tandem-hub publishers add`)",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        action="append",
        default=[],
        help="extra folder of profile YAML files (repeatable; also $TANDEM_PROFILE_PATH)",
    )
    task = parser.add_argument_group(
        "task",
        "what the outputs mean and the budget each task metric must meet against FP32 (docs/tasks.md); "
        "without --task it is inferred from the outputs and the reason printed",
    )
    task.add_argument(
        "--task",
        choices=[
            "classification",
            "token_classification",
            "detection",
            "dense",
            "ctc",
            "embedding",
            "regression",
            "custom",
        ],
        help="the model's task (default: inferred where the outputs make it unambiguous)",
    )
    task.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a task option, repeatable: output=NAME, scores=probabilities|logits|sigmoid|multi_label, "
        "layout=channels_first|anchors_first|nms, box_format=cxcywh|xyxy, score_threshold=0.25, "
        "iou_threshold=0.45, ambiguity=LOW,HIGH, threshold=0.5 (dense), blank=0 (ctc), "
        "mask=INPUT (token_classification's attention mask; default: an input named like *mask*), top_k=5, "
        "metric=module:function (a user metric hook), pad_value=V (inputs may be padded up to a --shapes "
        "bucket with V; CTC pads with 0 by default), state=IN:OUT[,IN:OUT] (a stateful model's state inputs "
        "and the outputs carrying their next value; default: found by name)",
    )
    task.add_argument(
        "--shapes",
        action="append",
        default=[],
        metavar="INPUT=SHAPE[,SHAPE...]",
        help="static shape buckets for LiteRT and OpenVINO (whose IRs are reshaped to them), e.g. "
        "x=1x3x48x160,1x3x48x320,1x3x48x480: one .tflite or IR per bucket; the agent runs a request on the bucket "
        "it equals, else pads it up to the smallest one that fits where the task allows (docs/tasks.md), "
        "else refuses it naming the buckets. Repeat for several inputs (bucket k takes the k-th shape of each). "
        "Without it a dynamic input is built at the calibration data's shape",
    )
    task.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="fix a scalar input at compile time, e.g. sr=16000 (repeatable): every variant is specialized "
        "to it (an If it decides is inlined, what it computes folded), the manifest lists it under "
        "bound_inputs, and the agent refuses a request that sends another value (docs/tasks.md)",
    )
    task.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="a budget per task metric, repeatable, e.g. map50=0.9, exact_match=0.95, cer=0.02, "
        "mask_iou=0.9, cosine_p5=0.98, rel_error_p95=0.05 (defaults: docs/tasks.md)",
    )
    conf = parser.add_argument_group(
        "confidence calibration",
        "per classification variant: a temperature fitted on half of --val and a fallback threshold chosen on that "
        "half for a goal; expected fallback rate and accuracy measured on the other half; all written to the manifest",
    )
    conf.add_argument(
        "--confidence-goal",
        choices=["match-reference", "fallback-budget", "hybrid-accuracy"],
        help="what each variant's threshold is chosen for: match-reference = the fallback rate the FP32 "
        "reference has at --reference-threshold; fallback-budget = --fallback-budget; "
        "hybrid-accuracy = least fallback with hybrid accuracy within --hybrid-within points of "
        "--cloud-model (default: hybrid-accuracy with --cloud-model, else fallback-budget with "
        "--fallback-budget, else match-reference)",
    )
    conf.add_argument(
        "--fallback-budget",
        type=number(0, 1),
        metavar="FRACTION",
        help="share of requests a variant may send to the cloud, e.g. 0.05",
    )
    conf.add_argument(
        "--reference-threshold",
        type=number(0, 1),
        default=DEFAULT_REFERENCE_THRESHOLD,
        metavar="T",
        help="the shared FP32 max-probability threshold match-reference keeps the fallback rate of "
        f"(default: {DEFAULT_REFERENCE_THRESHOLD:g}, the agent's default)",
    )
    conf.add_argument(
        "--cloud-model",
        type=Path,
        metavar="ONNX",
        help="the cloud model fallbacks go to (same inputs), for hybrid accuracy figures and goal",
    )
    conf.add_argument(
        "--hybrid-within",
        type=number(0, 100),
        default=DEFAULT_HYBRID_WITHIN_POINTS,
        metavar="POINTS",
        help="hybrid-accuracy goal: accuracy points below the cloud model allowed (default: 0.5)",
    )
    conf.add_argument(
        "--no-confidence-calibration",
        action="store_true",
        help="write no per-variant temperature and threshold (agents use their configured threshold)",
    )
    parser.add_argument("--no-timing", action="store_true", help="skip host latency/throughput measurement (faster)")
    parser.add_argument(
        "--timing-rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"time all variants together in this many interleaved rounds, the order rotated; reduced precision "
        f"is judged on its ratio to FP32 within each round (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an --out folder that is not a previous tandem-compile output (a previous output is "
        "always replaced, atomically: the new one is built beside it and swapped in when complete)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress on stderr, ours or NNCF's/OpenVINO's (warnings stay)"
    )
    return add_log_level(parser, "warning")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # --version VALUE names the model's version; alone it asks for ours
        import tandem

        print(f"tandem-compile {tandem.__version__}")
        return 0
    parser = build_parser()
    lead, rest = _leading_log_level(argv)
    if rest and rest[0] == "profiles":
        sub = argparse.ArgumentParser(prog="tandem-compile profiles", description="List the known hardware profiles.")
        sub.add_argument(
            "--profile-dir", type=Path, action="append", default=[], help="extra folder of profile YAML files"
        )
        sub.add_argument("--json", action="store_true")
        args = add_log_level(sub, "warning").parse_args(lead + rest[1:])
        handler = _list_profiles
    else:
        args = parser.parse_args(argv)
        missing = [
            flag for flag, value in (("--calib", args.calib), ("--val", args.val), ("--out", args.out)) if value is None
        ]
        if missing:
            parser.error(f"compiling needs {', '.join(missing)}")
        handler = _compile
    configure_logging(args, "%(levelname)s %(name)s: %(message)s")
    if getattr(args, "quiet", False):
        from tandem.model_compiler.quiet import silence_third_party_progress

        silence_third_party_progress()
    try:
        return handler(args)
    except (CompileError, ProfileError, ManifestError, SignatureError) as exc:
        print(f"tandem-compile: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --out, a full disk, a file that vanished: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tandem-compile: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tandem-compile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

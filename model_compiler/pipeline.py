"""The compile flow: prepare -> build variants per profile -> validate -> choose ->
golden set and drift reference -> signed manifest and report."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tandem.hardware_profiles import Profile, resolve_profiles
from tandem.hardware_profiles.runtimes import RuntimeUnavailableError, load_session
from tandem.model_compiler import model_io
from tandem.model_compiler.class_labels import labels_as_indices, with_class_labels
from tandem.model_compiler.classifier_outputs import strip_zipmap
from tandem.model_compiler.confidence import (
    DEFAULT_HYBRID_WITHIN_POINTS,
    DEFAULT_REFERENCE_THRESHOLD,
    CalibrationInputs,
    Goal,
    calibrate_task_variant,
    calibrate_variant,
    split_fit_eval,
)
from tandem.model_compiler.data import Dataset, batch_axis, check_label_range, load_dataset, take, whole_run
from tandem.model_compiler.drift_reference import build_drift_reference
from tandem.model_compiler.errors import CalibrationDataError, CompileError, VariantSkipped
from tandem.model_compiler.report import note_where_validated, write_reports
from tandem.model_compiler.ml_operators import ml_operators, refusal, runtimes_that_cannot
from tandem.model_compiler import quantized_source
from tandem.model_compiler.golden import DEFAULT_COUNT, GOLDEN_FILENAME, write_golden
from tandem.model_compiler.select import Candidate, choose_for_profile
from tandem.model_compiler.timing import DEFAULT_ROUNDS, Timed, close_all, open_variant, time_sessions
from tandem.model_compiler.specialize import bind_inputs
from tandem.model_compiler.validate import (
    Task,
    check_gate_can_judge,
    check_labels_fit,
    check_state,
    confidences,
    resolve_task,
    run_dataset,
    validate_variant,
)
from tandem.model_compiler.variants import BuildContext, BuiltVariant, Recipe, get_builder
from tandem.protocols.manifest import (
    MANIFEST_FILENAME,
    BoundInput,
    Calibration,
    FileEntry,
    Golden,
    Manifest,
    ProfileChoice,
    TensorSpec,
    Variant,
    parse_version,
)
from tandem.protocols.signing import key_id, load_or_create_private_key, public_key_pem, sign_manifest
from tandem.tasks import (
    DEFAULT_THRESHOLDS,
    TaskSpec,
    class_labels,
    class_probabilities,
    confidence_measure,
    task_confidence,
)
from tandem.tasks.shapes import pad_value

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def default_signing_key() -> Path:
    """The publisher key tandem-compile signs with unless told otherwise (created on first use)."""
    home = Path(os.environ.get("TANDEM_HOME", Path.home() / ".tandem"))
    return home / "keys" / "publisher.ed25519.pem"


def publisher_key(path: Path | None) -> Ed25519PrivateKey:
    """Load (or create, 0600) the publisher key, with its public half beside it for `tandem-hub publishers add`."""
    path = path or default_signing_key()
    created = not path.exists()
    key = load_or_create_private_key(path)
    public = path.with_name(path.name.removesuffix(".pem") + ".pub.pem")
    if not public.exists():
        public.write_bytes(public_key_pem(key))
    if created:
        log.warning(
            "created publisher key path=%s key_id=%s; trust it at the hub with: tandem-hub publishers add %s",
            path,
            key_id(key.public_key()),
            public,
        )
    return key


@dataclass
class CompileOptions:
    model: Path
    profiles: list[str]
    calib: Path
    val: Path
    out: Path
    name: str | None = None
    version: str = "1.0.0"
    max_accuracy_drop: float = 1.0
    calibration_method: str = "minmax"
    calib_samples: int = 256
    golden_count: int = DEFAULT_COUNT
    dense_threshold: float = 0.5
    expires_days: int = 365
    signing_key: Path | None = None
    profile_dirs: list[Path] = field(default_factory=list)
    timing: bool = True
    timing_seconds: float = 2.0
    timing_rounds: int = DEFAULT_ROUNDS  # every variant timed once per round, the order rotated (timing.py)
    force: bool = False
    # per-variant confidence calibration (model_compiler/confidence.py)
    confidence_calibration: bool = True
    confidence_goal: str | None = (
        None  # None: hybrid-accuracy with cloud_model, else fallback-budget when set, else match-reference
    )
    fallback_budget: float | None = None
    reference_threshold: float = DEFAULT_REFERENCE_THRESHOLD
    cloud_model: Path | None = None
    hybrid_within: float = DEFAULT_HYBRID_WITHIN_POINTS
    # what the outputs mean (None: inferred from them) and budgets per task metric (docs/tasks.md)
    task: TaskSpec | None = None
    budgets: dict[str, float] = field(default_factory=dict)
    # --shapes: static shape buckets per input for runtimes that need static shapes (LiteRT)
    shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    # --bind NAME=VALUE: scalar inputs fixed at compile time; the variants are specialized to them
    # (model_compiler/specialize.py) and the manifest lists them as bound_inputs
    bind: dict[str, str] = field(default_factory=dict)

    def goal(self) -> Goal:
        kind = self.confidence_goal or (
            "hybrid-accuracy"
            if self.cloud_model
            else "fallback-budget"
            if self.fallback_budget is not None
            else "match-reference"
        )
        return Goal(
            kind=kind,
            budget=self.fallback_budget,
            reference_threshold=self.reference_threshold,
            within_points=self.hybrid_within,
        ).check()


@dataclass
class VariantOutcome:
    """A recipe's fate: built and validated (metrics), or skipped (reason)."""

    recipe: Recipe
    profiles: list[str]
    built: BuiltVariant | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: list[np.ndarray] | None = None
    skipped: str | None = None
    build_seconds: float = 0.0
    calibration: dict[str, Any] | None = None


@dataclass
class CompileResult:
    out: Path
    manifest: Manifest
    outcomes: list[VariantOutcome]
    reference: dict[str, Any]
    notes: list[str]
    host: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_entries(files: list[Path], root: Path) -> list[FileEntry]:
    return [FileEntry(path=f.relative_to(root).as_posix(), sha256=_sha256(f), size=f.stat().st_size) for f in files]


def _check_options(opts: CompileOptions) -> None:
    if opts.calibration_method not in CALIBRATION_METHODS:
        raise CompileError(f"--calibration: {opts.calibration_method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if opts.max_accuracy_drop < 0:
        raise CompileError("--max-accuracy-drop must be >= 0 (points of accuracy)")
    if opts.timing_rounds < 1:
        raise CompileError(f"--timing-rounds must be >= 1, got {opts.timing_rounds}")
    parse_version(opts.version)
    if opts.confidence_calibration:
        opts.goal()
        if opts.goal().kind == "hybrid-accuracy" and opts.cloud_model is None:
            raise CompileError("--confidence-goal hybrid-accuracy needs --cloud-model (the model fallbacks go to)")
        if opts.cloud_model is not None and not opts.cloud_model.is_file():
            raise CompileError(f"--cloud-model {opts.cloud_model}: no such file")
    if not opts.profiles:
        raise CompileError("--profiles: name at least one profile (see `tandem-compile profiles`)")
    if opts.out.exists() and any(opts.out.iterdir()) and not opts.force:
        if not (opts.out / MANIFEST_FILENAME).exists():
            raise CompileError(
                f"--out {opts.out}: folder exists and is not a previous tandem-compile output; use --force or another folder"
            )


def _runtimes_without_ml_ops(
    profiles: list[Profile], prepared: onnx.ModelProto, prepared_path: Path, notes: list[str], say: Progress
) -> dict[str, str]:
    """runtime -> why it cannot run the model's ai.onnx.ml operators (model_compiler/ml_operators.py),
    said once as a note, then per profile in the plan's skips."""
    ops = ml_operators(prepared)
    if not ops:
        return {}
    cannot = runtimes_that_cannot((t.runtime for p in profiles for t in p.runtimes), prepared_path, ops)
    note = f"ai.onnx.ml operator(s) {', '.join(ops)}: ONNX Runtime runs them" + "".join(
        f"; {runtime} cannot run {', '.join(missing)}" for runtime, missing in cannot.items()
    )
    notes.append(note)
    say(f"note: {note}")
    return {runtime: refusal(runtime, missing) for runtime, missing in cannot.items()}


def _plan(
    profiles: list[Profile], progress: Progress, cannot: dict[str, str] | None = None
) -> tuple[dict[str, Recipe], dict[str, list[str]], dict[str, list[dict[str, str]]]]:
    """Recipes by id, the profiles that want each, and runtime-level skips per profile (a runtime that
    is not installed, or that `cannot` run the model's operators)."""
    recipes: dict[str, Recipe] = {}
    wanted_by: dict[str, list[str]] = {}
    skipped: dict[str, list[dict[str, str]]] = {p.name: [] for p in profiles}
    for profile in profiles:
        for target in profile.runtimes:
            if cannot and target.runtime in cannot:
                skipped[profile.name].append({"variant": f"{target.runtime}-*", "reason": cannot[target.runtime]})
                progress(f"profile {profile.name}: {cannot[target.runtime]}")
                continue
            try:
                builder = get_builder(target.runtime)
            except ImportError as exc:
                reason = f"{target.runtime} builder unavailable: {exc}"
                skipped[profile.name].append({"variant": f"{target.runtime}-*", "reason": reason})
                progress(f"profile {profile.name}: {reason}")
                continue
            for recipe in builder.recipes(profile):
                recipes.setdefault(recipe.id, recipe)
                wanted_by.setdefault(recipe.id, [])
                if profile.name not in wanted_by[recipe.id]:
                    wanted_by[recipe.id].append(profile.name)
    progress(f"plan: {len(recipes)} variant(s) for {len(profiles)} profile(s): {', '.join(recipes)}")
    return recipes, wanted_by, skipped


def compile_model(opts: CompileOptions, progress: Progress | None = None) -> CompileResult:
    """Compile `opts.model` for `opts.profiles` into `opts.out`; see docs/architecture.md.

    Built in a hidden sibling folder and renamed into place at the end, so a failed or interrupted
    compile leaves nothing behind (never a half-written --out that blocks the re-run).
    """
    _check_options(opts)
    final = opts.out
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        result = _compile_into(replace(opts, out=tmp, force=True), progress)
        if final.exists():  # --force, or a previous tandem-compile output (_check_options refused anything else)
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = final
    write_reports(result)  # again: the reports name the folder
    return result


def _compile_into(opts: CompileOptions, progress: Progress | None = None) -> CompileResult:
    say = progress or (lambda message: log.info(message))
    profiles = resolve_profiles(opts.profiles, opts.profile_dirs)
    started = time.perf_counter()

    say(f"loading {opts.model}")
    source = model_io.load_model(opts.model)
    rewrite = strip_zipmap(source)
    out = opts.out
    if out.exists() and opts.force:
        shutil.rmtree(out)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    prepared_path = work / "reference-fp32.onnx"
    prepared, notes = model_io.prepare_model(source, prepared_path)
    notes = rewrite.notes + notes
    original_path, bound = prepared_path, []
    if opts.bind:  # the reference stays the model as given, fed the bound values: the gate judges the specialization
        original_path = work / "original-fp32.onnx"
        prepared_path.rename(original_path)
        specialized = bind_inputs(prepared, opts.bind)
        prepared, more = model_io.prepare_model(specialized.model, prepared_path)
        notes += specialized.notes + more
        bound = specialized.bound
    quantized = quantized_source.quantized_ops(prepared)
    if quantized:
        notes.append(quantized_source.note(quantized))
    for note in notes:
        say(f"note: {note}")
    inputs, outputs = model_io.io_specs(prepared)

    calib = load_dataset(opts.calib, inputs, "calibration")
    val = load_dataset(opts.val, inputs, "validation")
    _check_bound_data(bound, [(opts.calib, "calibration"), (opts.val, "validation")])
    if len(calib) > opts.calib_samples:
        calib = calib.head(opts.calib_samples)
    say(
        f"data: {len(calib)} calibration and {len(val)} validation samples"
        + (" with labels" if val.labels is not None else " (no labels: agreement only)")
    )

    say("running the FP32 reference" + (" (the model as given, with the bound inputs fed)" if bound else ""))
    try:
        ref_session = load_session("onnxruntime", original_path, graph_optimization=False)
    except RuntimeUnavailableError as exc:
        raise CompileError(f"ONNX Runtime, the compiler's reference, cannot load {opts.model}: {exc}") from exc
    ref_feeds = {**val.inputs, **{b.name: np.asarray(b.value, dtype=b.dtype) for b in bound}}
    reference = run_dataset(ref_session, ref_feeds, {**val.axes, **{b.name: None for b in bound}})
    ref_session.close()
    task = with_class_labels(_resolve_task(opts, prepared, outputs, reference, val), rewrite, reference)
    val = labels_as_indices(val, task)
    check_state(task.spec, inputs, outputs)
    unknown = sorted(set(opts.shapes) - {spec.name for spec in inputs})
    if unknown:
        raise CompileError(
            f"--shapes: {', '.join(unknown)} is not an input (inputs: {', '.join(s.name for s in inputs)})"
        )
    if task.kind == "classification" and val.labels is not None and task.spec.scores != "multi_label":
        num_classes = class_probabilities(task.spec, reference[task.output_index]).shape[1]
        check_label_range(val.labels, num_classes, f"validation data {val.source}")
    say(f"task: {task.kind} on output {outputs[task.output_index].name!r} ({task.reason})")
    say(
        "task gate: "
        + (
            ", ".join(
                f"{k} {'<=' if k in ('cer', 'rel_error_p95', 'rel_error_mean') else '>='} {v:g}"
                for k, v in task.budgets.items()
            )
            or "no task budget"
        )
        + (
            "; accuracy within --max-accuracy-drop points of FP32"
            if task.kind == "classification" and val.labels is not None
            else ""
        )
    )
    ref_metrics: dict[str, Any] = {"task": task.kind, "task_budgets": dict(task.budgets), "task_reason": task.reason}
    if task.kind == "classification" and val.labels is not None and task.spec.scores != "multi_label":
        ref_metrics["accuracy"] = float((class_labels(task.spec, reference[task.output_index]) == val.labels).mean())
        say(f"reference accuracy on validation data: {ref_metrics['accuracy']:.4f}")

    blocked = _profiles_blocked_by_ops(profiles, model_io.op_types(prepared))
    cannot = _runtimes_without_ml_ops(profiles, prepared, prepared_path, notes, say)
    for profile in profiles:
        if profile.name not in blocked and all(t.runtime in cannot for t in profile.runtimes):
            blocked[profile.name] = "; ".join(dict.fromkeys(cannot[t.runtime] for t in profile.runtimes))
    buildable = [p for p in profiles if p.name not in blocked]
    recipes, wanted_by, skipped = _plan(buildable, say, cannot)
    outcomes = _build_and_validate(
        recipes, wanted_by, prepared_path, calib, val, task, reference, opts, out, say, quantized, (inputs, outputs)
    )
    note_where_validated(outcomes, buildable)
    if opts.timing:
        _time_in_rounds(outcomes, task, val, opts, say)
    if opts.confidence_calibration and task.calibratable:
        _calibrate(outcomes, opts, task, val, reference, outputs[task.output_index].name, ref_metrics, say)

    choices: dict[str, ProfileChoice] = {}
    for profile in profiles:
        if profile.name in blocked:
            choices[profile.name] = ProfileChoice(chosen=None, reason=blocked[profile.name])
            continue
        mine = [o for o in outcomes if profile.name in o.profiles]
        prof_skipped = skipped[profile.name] + [
            {"variant": o.recipe.id, "reason": o.skipped} for o in mine if o.skipped
        ]
        candidates = [
            Candidate(o.recipe.id, o.recipe.runtime, o.recipe.precision, o.metrics)
            for o in mine
            if o.built and not o.skipped
        ]
        choices[profile.name] = choose_for_profile(
            profile,
            candidates,
            max_accuracy_drop=opts.max_accuracy_drop,
            reference_accuracy=ref_metrics.get("accuracy"),
            skipped=prof_skipped,
        )
        say(
            f"profile {profile.name}: {choices[profile.name].chosen or 'nothing fits'} ({choices[profile.name].reason})"
        )

    manifest = _write_manifest(
        opts, out, prepared, inputs, outputs, task, outcomes, choices, val, reference, ref_metrics, bound, rewrite.notes
    )
    shutil.rmtree(work, ignore_errors=True)
    result = CompileResult(out, manifest, outcomes, ref_metrics, notes, _host_dict())
    write_reports(result)
    say(f"done in {time.perf_counter() - started:.1f}s: {out / MANIFEST_FILENAME}")
    return result


def _check_bound_data(bound: list[BoundInput], files: list[tuple[Path, str]]) -> None:
    """A data file may hold a bound input (ignored) only with the bound value: data recorded at
    another sample rate than --bind names would validate the variants on the wrong inputs."""
    for path, role in files:
        with np.load(path, allow_pickle=False) as npz:
            for b in bound:
                why = b.mismatch(np.asarray(npz[b.name]), who=f"{role} data {path}") if b.name in npz.files else None
                if why is not None:
                    raise CalibrationDataError(why)


def _resolve_task(
    opts: CompileOptions,
    prepared: onnx.ModelProto,
    outputs: list[TensorSpec],
    reference: list[np.ndarray],
    val: Dataset,
) -> Task:
    """The stated or inferred task; a classifier's default budget follows --max-accuracy-drop."""
    producers = {out: node.op_type for node in prepared.graph.node for out in node.output}
    names = [o.name for o in outputs]
    task = resolve_task(names, reference, [producers.get(n) for n in names], opts.task, dict(opts.budgets), val.inputs)
    check_labels_fit(task, reference[task.output_index], val)
    check_gate_can_judge(task, reference[task.output_index])
    if task.kind == "classification" and "top1_agreement" not in opts.budgets:
        derived = dict(task.budgets)
        if val.labels is not None and task.spec.scores != "multi_label":
            derived.pop("top1_agreement", None)  # with labels, accuracy against FP32's decides (select.py)
        else:
            derived["top1_agreement"] = max(0.0, 1.0 - opts.max_accuracy_drop / 100.0)
        task = Task(task.spec, task.output_index, derived, task.reason)
    return task


def _served_inputs(inputs: list[TensorSpec], frozen: dict[str, list[int]]) -> list[TensorSpec]:
    """The model's input specs with the dims a variant fixed (LiteRT's static shapes), so the
    manifest never advertises a shape the variant cannot take."""
    served = []
    for spec in inputs:
        got = frozen.get(spec.name)
        if got and len(got) == len(spec.shape) and any(m < 0 < g for m, g in zip(spec.shape, got)):
            spec = TensorSpec(spec.name, spec.dtype, [g if m < 0 < g else m for m, g in zip(spec.shape, got)])
        served.append(spec)
    return served


def _host_dict() -> dict[str, Any]:
    """What the report says about the machine that measured the variants."""
    from tandem.model_compiler.host import BF16_FEATURES, INT8_FEATURES, read_host

    host = read_host()
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    shown = [f for f in INT8_FEATURES + BF16_FEATURES + ("f16c", "fma") if host.has(f)]
    return {
        "machine": host.isa,
        "cpu_model": cpu_model or "unknown CPU",
        "features": shown,
        "vnni": host.has_vnni,
        "bf16": host.has_bf16,
    }


def _profiles_blocked_by_ops(profiles: list[Profile], ops: set[str]) -> dict[str, str]:
    blocked = {}
    for profile in profiles:
        bad = sorted(ops & set(profile.constraints.unsupported_ops))
        if bad:
            blocked[profile.name] = f"the model uses {', '.join(bad)}, which {profile.name} cannot run"
    return blocked


def _variant_log(say: Progress, rid: str) -> Callable[[str], None]:
    """A variant builder's progress lines, prefixed with the variant's id."""
    return lambda message: say(f"  {rid}: {message}")


def _build_and_validate(
    recipes: dict[str, Recipe],
    wanted_by: dict[str, list[str]],
    prepared_path: Path,
    calib: Dataset,
    val: Dataset,
    task: Task,
    reference: list[np.ndarray],
    opts: CompileOptions,
    out: Path,
    say: Progress,
    quantized: list[str] | None = None,
    declared: tuple[list[TensorSpec], list[TensorSpec]] | None = None,
) -> list[VariantOutcome]:
    """Build and validate each recipe; one that cannot be built is skipped with its reason. `quantized`:
    the source's quantized operators (quantized_source.py), which rule some recipes out before building;
    `declared`: the inputs and outputs the manifest lists, which each variant must match (the agent checks)."""
    outcomes = []
    total = len(recipes)
    for i, (rid, recipe) in enumerate(recipes.items(), start=1):
        outcome = VariantOutcome(recipe=recipe, profiles=wanted_by[rid])
        outcomes.append(outcome)
        refused = quantized_source.refusal(recipe.runtime, recipe.precision, quantized or [])
        if refused:
            outcome.skipped = refused
            say(f"[{i}/{total}] skipped {rid}: {refused}")
            continue
        variant_dir = out / "variants" / rid
        variant_dir.mkdir(parents=True, exist_ok=True)
        ctx = BuildContext(
            model_path=prepared_path,
            calib=calib.inputs,
            out_dir=variant_dir,
            calibration_method=opts.calibration_method,
            log=_variant_log(say, rid),
            shapes=opts.shapes or None,
            pad_value=pad_value(task.spec) or 0.0,
            task=task,
            dense_threshold=opts.dense_threshold,
        )
        say(f"[{i}/{total}] building {rid}")
        t0 = time.perf_counter()
        try:
            built = get_builder(recipe.runtime).build(recipe, ctx)
            outcome.build_seconds = time.perf_counter() - t0
            say(f"[{i}/{total}] validating {rid} (built in {outcome.build_seconds:.1f}s)")
            metrics, outputs = validate_variant(
                recipe.runtime,
                built.files,
                built.session_options,
                task,
                reference,
                val,
                timing=False,  # all variants together afterwards, in rounds (_time_in_rounds)
                dense_threshold=opts.dense_threshold,
                buckets=built.buckets or None,
                pad_axes=built.pad_axes,
                reference_model=prepared_path,
                declared=declared,
            )
            outcome.built, outcome.metrics, outcome.outputs = built, metrics, outputs
            say(
                f"[{i}/{total}] {rid}: task {metrics['task_gate']}: {metrics['task_reason']}"
                + f" (element agreement {metrics['agreement']:.4f}, informational)"
            )
        except VariantSkipped as exc:
            outcome.skipped = exc.reason
            shutil.rmtree(variant_dir, ignore_errors=True)
            say(f"[{i}/{total}] skipped {rid}: {exc.reason}")
    return outcomes


def _time_in_rounds(
    outcomes: list[VariantOutcome], task: Task, val: Dataset, opts: CompileOptions, say: Progress
) -> None:
    """Time every validated variant together in interleaved rounds (model_compiler/timing.py), so
    a load that changes during the compile slows all of them alike instead of whichever ran then."""
    ok = [o for o in outcomes if o.built and not o.skipped]
    sessions = {}
    for o in ok:
        assert o.built is not None
        try:
            sessions[o.recipe.id] = open_variant(
                o.recipe.runtime,
                o.built.files,
                o.built.session_options,
                o.built.buckets or None,
                o.built.pad_axes,
                task.spec,
            )
        except Exception as exc:  # validation loaded it a moment ago; say so, never fail the compile
            o.metrics["timing_error"] = f"{type(exc).__name__}: {exc}"[:300]
    say(f"timing {len(sessions)} variant(s) in {opts.timing_rounds} interleaved rounds")
    try:
        timed = time_sessions(sessions, val, rounds=opts.timing_rounds, seconds=opts.timing_seconds)
    finally:
        close_all(sessions)
    for o in ok:
        got = timed.get(o.recipe.id)
        if isinstance(got, Timed):
            o.metrics.update(got.metrics())
            say(
                f"  {o.recipe.id}: p50 {o.metrics['latency_p50_ms']:.3f} ms (median of {len(got.latency_rounds_ms)} rounds)"
            )
        elif got is not None:
            o.metrics["timing_error"] = got


def _cloud_predictions(opts: CompileOptions, val: Dataset) -> np.ndarray:
    """The cloud model's answers on the validation inputs (argmax of its first output)."""
    assert opts.cloud_model is not None
    try:
        session = load_session("onnxruntime", opts.cloud_model)
    except Exception as exc:
        raise CompileError(f"--cloud-model {opts.cloud_model}: ONNX Runtime cannot load it ({exc})") from exc
    try:
        names = {s.name for s in session.inputs}
        if names != set(val.inputs):
            raise CompileError(
                f"--cloud-model {opts.cloud_model}: its inputs ({', '.join(sorted(names))}) are not the "
                f"edge model's ({', '.join(sorted(val.inputs))}); hybrid accuracy needs the same inputs"
            )
        out = run_dataset(session, val.inputs, val.axes)[0]
    finally:
        session.close()
    if out.ndim != 2 or out.shape[0] != len(val):
        raise CompileError(
            f"--cloud-model {opts.cloud_model}: first output has shape {list(out.shape)}; expected [samples, classes]"
        )
    return out.argmax(axis=1)


def _calibrate_task(
    outcomes: list[VariantOutcome],
    goal: Goal,
    task: Task,
    val: Dataset,
    reference: list[np.ndarray],
    output_name: str,
    measure: str,
    say: Progress,
) -> None:
    """Per-variant threshold on the task's own confidence (model_compiler/confidence.calibrate_task_variant)."""
    ref_conf = confidences(task, reference[task.output_index])
    if ref_conf is None or len(ref_conf) != len(val):
        say(
            f"confidence calibration skipped: the {measure} confidence has "
            f"{0 if ref_conf is None else len(ref_conf)} rows for {len(val)} validation samples"
        )
        return
    if goal.kind == "hybrid-accuracy":
        say(f"confidence calibration skipped: hybrid-accuracy compares class answers, not the {measure} confidence")
        return
    fit, evaluation, how = split_fit_eval(len(val), None)
    data = CalibrationInputs(fit=fit, evaluation=evaluation, split=how, labels=None, reference_conf=ref_conf)
    key = measure.split(":", 1)[1]
    say(f"confidence calibration ({measure}): goal {goal.kind}; {how}")
    for o in outcomes:
        if not o.built or o.skipped or not o.outputs:
            continue
        conf = confidences(task, o.outputs[task.output_index])
        if conf is None:
            continue
        o.calibration = calibrate_task_variant(conf, measure, DEFAULT_THRESHOLDS[key], goal, data, output_name)
        c = o.calibration
        say(f"  {o.recipe.id}: threshold {c['threshold']:.4f}, expected fallback {c['expected_fallback_rate']:.3f}")


def _calibrate(
    outcomes: list[VariantOutcome],
    opts: CompileOptions,
    task: Task,
    val: Dataset,
    reference: list[np.ndarray],
    output_name: str,
    ref_metrics: dict[str, Any],
    say: Progress,
) -> None:
    """Fit every validated variant's temperature and threshold for the goal (see model_compiler/confidence.py)."""
    goal = opts.goal()
    rows = reference[task.output_index].shape[0]
    measure = confidence_measure(task.spec)
    if measure is not None:
        _calibrate_task(outcomes, goal, task, val, reference, output_name, measure, say)
        return
    if rows != len(val) or reference[task.output_index].ndim != 2:
        say(
            f"confidence calibration skipped: the output has {rows} rows for {len(val)} validation samples "
            "(the leading input axis is not a batch of samples)"
        )
        return
    fit, evaluation, how = split_fit_eval(len(val), val.labels)
    cloud_pred = _cloud_predictions(opts, val) if opts.cloud_model is not None else None
    if cloud_pred is not None and val.labels is not None:
        ref_metrics["cloud_accuracy"] = float((cloud_pred == val.labels).mean())
    reference_conf = confidences(task, reference[task.output_index])
    if reference_conf is None:  # [samples, classes] outputs always give one; say so rather than fail later
        say("confidence calibration skipped: the task gives no confidence per sample")
        return
    data = CalibrationInputs(
        fit=fit,
        evaluation=evaluation,
        split=how,
        labels=val.labels,
        reference_conf=reference_conf,
        cloud_pred=cloud_pred,
    )
    say(f"confidence calibration: goal {goal.kind}; {how}")
    for o in outcomes:
        if not o.built or o.skipped or not o.outputs:
            continue
        o.calibration = calibrate_variant(o.outputs[task.output_index], task.probabilities, goal, data, output_name)
        c = o.calibration
        say(
            f"  {o.recipe.id}: temperature {c['temperature']:.3f}, threshold {c['threshold']:.4f}, "
            f"expected fallback {c['expected_fallback_rate']:.3f}"
            + (
                f", hybrid accuracy {c['expected_hybrid_accuracy']:.4f}"
                if c["expected_hybrid_accuracy"] is not None
                else ""
            )
        )


def _write_manifest(
    opts: CompileOptions,
    out: Path,
    prepared: onnx.ModelProto,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    task: Task,
    outcomes: list[VariantOutcome],
    choices: dict[str, ProfileChoice],
    val: Dataset,
    reference: list[np.ndarray],
    ref_metrics: dict[str, Any],
    bound: list[BoundInput] | None = None,
    model_notes: list[str] | None = None,
) -> Manifest:
    ok = [o for o in outcomes if o.built and not o.skipped]
    variants = []
    for o in ok:
        assert o.built is not None
        options = dict(o.recipe.options)
        if o.built.session_options:
            options["session"] = dict(o.built.session_options)
        if o.built.notes:
            options["notes"] = list(o.built.notes)
        if o.built.buckets:  # the shapes each file takes; the agent picks, pads or refuses by them
            options["buckets"] = [{**b, "file": Path(b["file"]).relative_to(out).as_posix()} for b in o.built.buckets]
            options["pad_axes"] = dict(o.built.pad_axes)
        chosen_for = [p for p, c in choices.items() if c.chosen == o.recipe.id]
        served = _served_inputs(inputs, o.metrics.get("input_shapes", {}))
        if served != list(inputs):
            options.setdefault("notes", []).append(
                "takes only "
                + ", ".join(f"{s.name} {s.shape}" for s in served if s not in inputs)
                + " (shapes fixed when the variant was built; the model itself takes -1 there)"
            )
        variants.append(
            Variant(
                id=o.recipe.id,
                runtime=o.recipe.runtime,
                precision=o.recipe.precision,
                files=_file_entries(o.built.files, out),
                inputs=served,
                outputs=list(outputs),
                profiles=sorted(set(o.profiles) | set(chosen_for)),
                options=options,
                metrics={
                    k: (round(v, 6) if isinstance(v, float) else v) for k, v in o.metrics.items() if k != "input_shapes"
                },
                calibration=Calibration.from_dict(o.calibration, o.recipe.id) if o.calibration else None,
            )
        )

    golden = None
    if ok:
        count = min(opts.golden_count, len(val))
        run = whole_run(inputs)  # [3, 8] with no batch axis: whole inputs, 15 rows of 16
        count = max(count - count % run, min(run, len(val)))
        golden_inputs = val.head(count).inputs
        out_axes = [batch_axis(spec.shape) for spec in outputs]
        write_golden(
            out / GOLDEN_FILENAME,
            golden_inputs,
            {
                o.recipe.id: [
                    take(x, out_axes[i] if i < len(out_axes) else 0, 0, count) if x.ndim else x
                    for i, x in enumerate(o.outputs or [])
                ]
                for o in ok
            },
        )
        golden = Golden(
            file=_file_entries([out / GOLDEN_FILENAME], out)[0], count=count, atol=0.05, min_top1_agreement=0.9
        )

    ref_out = reference[task.output_index]
    found = task_confidence(task.spec, ref_out)  # confidence and task drift signals of FP32, as the agent reads them
    conf = found.confidence
    single_label = task.kind == "classification" and task.spec.scores != "multi_label"
    pred = class_labels(task.spec, ref_out) if single_label else None
    classes = (
        (2 if task.spec.scores == "sigmoid" else ref_out.reshape(len(ref_out), -1).shape[1]) if single_label else None
    )
    drift = build_drift_reference(val.samples_first(), conf, pred, classes, signals=found.signals)

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    manifest = Manifest(
        name=opts.name or opts.model.stem,
        version=opts.version,
        created_at=now.isoformat(),
        expires_at=(now + dt.timedelta(days=opts.expires_days)).isoformat() if opts.expires_days > 0 else None,
        task=task.to_dict(outputs[task.output_index].name),
        inputs=list(inputs),
        outputs=list(outputs),
        variants=variants,
        profiles=choices,
        target_profiles=list(choices),
        golden=golden,
        drift_reference=drift,
        source={
            "file": opts.model.name,
            "sha256": _sha256(opts.model),
            "opset": model_io.default_opset(prepared),
            "weight_bytes": model_io.weight_bytes(prepared),
            "reference": ref_metrics,
            **({"notes": list(model_notes)} if model_notes else {}),  # what the compiler changed in the graph
        },
        bound_inputs=list(bound or []),
    )
    signed = sign_manifest(manifest.to_dict(), publisher_key(opts.signing_key))
    manifest = Manifest.from_dict(signed)
    (out / MANIFEST_FILENAME).write_text(manifest.to_json() + "\n", encoding="utf-8")
    return manifest

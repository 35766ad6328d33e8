"""bench/gpu.py's ONNX Runtime session on one execution provider, opened so that it can never pass
on the CPU by accident: ORT's own fallback is off, what it logs while starting a provider is kept,
the providers it really got are checked, and the first runs are profiled to see which provider ran
each node (a GPU provider that takes none of the graph is a CPU run under another name)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from tandem.hardware_profiles.probe import provider_tier
from tandem.hardware_profiles.runtimes.base import IOSpec
from tandem.hardware_profiles.runtimes.onnxruntime import _ORT_TYPES, _dims

CPU = "CPUExecutionProvider"
LOG_LINES = 12  # of what ORT printed while starting the providers, kept per variant


class ProviderError(Exception):
    """The session did not get (or could not run on) the execution provider asked for."""

    def __init__(self, message: str, got: list[str] | None = None) -> None:
        super().__init__(message)
        self.got = got  # the providers ONNX Runtime gave the session, when it made one


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Everything written to stdout and stderr inside, by Python or by ORT's C++ logger (file
    descriptors 1 and 2), as lines once the block ends; nothing reaches the terminal or --json."""
    lines: list[str] = []
    py_out = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_out):
                yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = sink.read().decode(errors="replace") + py_out.getvalue()
            lines.extend(line.rstrip() for line in text.splitlines() if line.strip())


def provider_chain(ep: str, profile_eps: list[str]) -> list[str]:
    """The providers a session on `ep` is given, as the agent's placement gives them: `ep`, the
    profile's providers after it (TensorRT then CUDA for nodes TensorRT leaves), and the CPU last."""
    tail = profile_eps[profile_eps.index(ep) + 1 :] if ep in profile_eps else []
    return list(dict.fromkeys([ep, *tail, CPU]))


@dataclass
class Placement:
    """Which provider ran each node in the profiled runs (ORT's profile, `args.provider`)."""

    nodes: dict[str, int] = field(default_factory=dict)  # provider -> nodes
    ops_off_target: dict[str, int] = field(default_factory=dict)  # op type -> nodes not on the asked-for tier

    def as_dict(self, ep: str) -> dict[str, Any]:
        total = sum(self.nodes.values())
        on = self.nodes.get(ep, 0)
        return {
            "nodes_by_provider": dict(sorted(self.nodes.items())),
            "nodes_on_requested": on,
            "nodes_total": total,
            "all_on_requested_tier": not self.ops_off_target,
            "ops_off_requested_tier": dict(sorted(self.ops_off_target.items())),
        }


def read_placement(trace: Path, ep: str) -> Placement:
    """Nodes per provider from an ORT profile; a node counts once however often it ran."""
    seen: dict[str, tuple[str, str]] = {}
    for event in json.loads(trace.read_text()):
        args = event.get("args") or {}
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time") and "provider" in args:
            seen[event["name"]] = (str(args["provider"]), str(args.get("op_name", "?")))
    placement = Placement()
    tier = provider_tier(ep)
    for provider, op in seen.values():
        placement.nodes[provider] = placement.nodes.get(provider, 0) + 1
        # Memcpy nodes move tensors between host and device: they belong to a GPU run
        if provider_tier(provider) != tier and not op.startswith("Memcpy"):
            placement.ops_off_target[op] = placement.ops_off_target.get(op, 0) + 1
    return placement


class EPSession:
    """An ORT InferenceSession on `providers` with ORT's silent CPU fallback off, shaped like the
    runtime adapters' sessions (inputs, outputs, run, close) so the compiler's run_dataset,
    compare_outputs and measure_latency take it as they take the agent's."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, providers: list[str], profile_dir: Path | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_dir / f"profile-{path.stem}")
        self.requested = list(providers)
        self.log: list[str] = []
        with warnings.catch_warnings(record=True) as caught, captured_output() as lines:
            warnings.simplefilter("always")
            try:
                # enable_fallback=0: a provider that fails to start raises instead of ORT printing
                # "EP Error ... Falling back to ['CPUExecutionProvider']" and carrying on
                self._session = ort.InferenceSession(
                    str(path), sess_options=options, providers=providers, enable_fallback=0
                )
                error = None
            except Exception as exc:  # ORT raises its own Fail/RuntimeException types
                error = f"{type(exc).__name__}: {exc}"
        self.log = [str(w.message) for w in caught] + lines
        if error is not None:
            raise ProviderError(_with_log(f"session creation failed on {providers[0]}: {error}", self.log))
        self.providers: list[str] = list(self._session.get_providers())
        if providers[0] not in self.providers:
            raise ProviderError(
                _with_log(
                    f"session did not get {providers[0]}: ONNX Runtime gave it {self.providers} "
                    f"(asked for {providers}; available here: {ort.get_available_providers()})",
                    self.log,
                ),
                got=self.providers,
            )
        self._profiling = profile_dir is not None
        self.inputs = [
            IOSpec(i.name, _ORT_TYPES.get(i.type, i.type), _dims(i.shape)) for i in self._session.get_inputs()
        ]
        self.outputs = [
            IOSpec(o.name, _ORT_TYPES.get(o.type, o.type), _dims(o.shape)) for o in self._session.get_outputs()
        ]
        self._names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(self._session.run(self._names, dict(feeds)))
        except Exception as exc:  # EPFail and friends: reported per variant, never retried on the CPU
            raise ProviderError(f"run failed on {self.requested[0]}: {type(exc).__name__}: {exc}") from exc

    def placement(self) -> Placement:
        """End profiling (later runs are not profiled) and read which provider ran each node."""
        if not self._profiling:
            raise ValueError("this session was opened without profiling")
        self._profiling = False
        trace = Path(self._session.end_profiling())
        try:
            return read_placement(trace, self.requested[0])
        finally:
            trace.unlink(missing_ok=True)

    def close(self) -> None:
        self._session = None


def _with_log(message: str, log: list[str]) -> str:
    relevant = [line for line in log if line.strip()][-LOG_LINES:]
    return message + ("; ONNX Runtime said: " + " | ".join(relevant) if relevant else "")

"""The same requests served edge-only, cloud-only and hybrid, side by side.

What the hybrid buys, measured rather than asserted: accuracy, p50/p99 latency, hub
calls per 1,000 requests and bytes sent, for one edge variant (the agent's own loader
and default policy) and the hub's inference server (in a process of its own, on
loopback gRPC, asked by the agent's fallback client). bench/hybrid.py and
`tandem-sim demo` lead with it.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tandem.edge_agent.policy import ConfidencePolicy
from tandem.model_compiler.confidence import MEASURE

Progress = Callable[[str], None]
DEFAULT_KIND = MEASURE  # the agent's default policy kind
HUB_PROFILE = "cpu-x86"


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float((predicted == labels).mean()) if labels.size else float("nan")


def log(message: str) -> None:
    print(f"[side-by-side] {message}", file=sys.stderr, flush=True)


SIDE_BY_SIDE_PROFILE = "cpu-x86"
SIDE_MODES = ("edge-only", "cloud-only", "hybrid")
BLOCK = 30  # requests a mode serves before the next takes its turn
# Issue 24's targets for the side-by-side (at the agent's default policy and threshold).
MIN_CLOUD_GAIN_POINTS = 1.5
HYBRID_MAX_GAP_POINTS = 0.3
HYBRID_MAX_FALLBACK = 0.10
HYBRID_MAX_P50_RATIO = 1.2


def agent_policy(model: Any, kind: str = DEFAULT_KIND) -> tuple[ConfidencePolicy, dict[str, Any]]:
    """The policy an agent with no policy settings builds for this variant (Agent._make_policy)."""
    from tandem.edge_agent.policy import resolve_threshold

    task = model.manifest.task
    choice = resolve_threshold(kind, None, model.variant.calibration, task.get("threshold"), None)
    policy = ConfidencePolicy(kind, choice.threshold, temperature=choice.temperature)
    return policy, {
        "kind": kind,
        "threshold": policy.threshold,
        "temperature": choice.temperature,
        "source": choice.source,
    }


def percentile_ms(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q)) if samples else float("nan")


def summarize_mode(
    labels: np.ndarray, predicted: Sequence[int], latencies_ms: Sequence[float], hub_calls: int, bytes_sent: int
) -> dict[str, Any]:
    """One mode's line of the side-by-side (pure: answers and measurements in)."""
    n = max(1, len(predicted))
    return {
        "accuracy": accuracy(labels, np.asarray(predicted, dtype=np.int64)),
        "p50_ms": percentile_ms(latencies_ms, 50),
        "p99_ms": percentile_ms(latencies_ms, 99),
        "hub_calls_per_1000": 1000.0 * hub_calls / n,
        "fallback_fraction": hub_calls / n,
        "bytes_sent": int(bytes_sent),
        "bytes_sent_per_request": bytes_sent / n,
    }


def judge_side_by_side(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 24's four targets, each with its figure."""
    edge, cloud, hybrid = (modes[m] for m in SIDE_MODES)
    gain = (cloud["accuracy"] - edge["accuracy"]) * 100.0
    gap = (cloud["accuracy"] - hybrid["accuracy"]) * 100.0
    ratio = hybrid["p50_ms"] / edge["p50_ms"] if edge["p50_ms"] > 0 else float("inf")
    targets: dict[str, Any] = {
        "cloud_beats_edge_by_1.5_points": {"points": gain, "met": gain >= MIN_CLOUD_GAIN_POINTS - 1e-9},
        "hybrid_within_0.3_points_of_cloud": {"points": gap, "met": gap <= HYBRID_MAX_GAP_POINTS + 1e-9},
        "hybrid_fallback_le_0.10": {
            "fraction": hybrid["fallback_fraction"],
            "met": hybrid["fallback_fraction"] <= HYBRID_MAX_FALLBACK + 1e-9,
        },
        "hybrid_p50_within_1.2x_of_edge_only": {"ratio": ratio, "met": ratio <= HYBRID_MAX_P50_RATIO},
    }
    targets["met"] = all(t["met"] for t in targets.values())
    return targets


_HUB_CHILD = """
import sys
from tandem.cloud_hub.inference.server import InferenceServer
server = InferenceServer(sys.argv[1], hub_profile=sys.argv[2], device_rate_per_s=1e6, device_burst=1_000_000)
server.start()
print(server.address, flush=True)
sys.stdin.read()  # EOF: the bench is done
server.stop()
"""


class HubProcess:
    """The hub's inference server in its own process, as on its own machine: its threads do not share our GIL."""

    def __init__(self, cloud_dir: Path) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _HUB_CHILD, str(cloud_dir), HUB_PROFILE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not line:
            self._proc.kill()
            raise RuntimeError(f"the hub process exited before serving (status {self._proc.wait()})")
        self.address = line

    def stop(self) -> None:
        try:
            self._proc.communicate(timeout=15)
        except Exception:  # noqa: BLE001 - a hub that will not stop is killed
            self._proc.kill()
            self._proc.wait()


def side_by_side(
    edge_dir: Path,
    cloud_dir: Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    profile: str = SIDE_BY_SIDE_PROFILE,
    say: Progress = log,
) -> dict[str, Any]:
    """Serve every row three ways, one request at a time, interleaved so load hits all modes alike.

    The edge half is the agent's own loader and policy; the cloud half is the hub's own
    inference server in a process of its own on a loopback gRPC port, asked by the
    agent's fallback client. Modes take turns in blocks of BLOCK requests (every order of
    the three in turn), so a slow spell of a shared machine hits all three alike.
    Latency is per request, from input array to label; bytes are serialized
    ModelInferRequest bytes sent to the hub.
    """
    from tandem.edge_agent.fallback import FallbackClient, build_request
    from tandem.edge_agent.model import load_model
    from tandem.protocols import inference_params as params
    from tandem.protocols.manifest import load_manifest

    model = load_model(edge_dir, profile)
    cloud_name = load_manifest(cloud_dir).name
    hub_model = cloud_name
    policy, policy_info = agent_policy(model)
    input_name = model.input_specs[0].name
    server = HubProcess(cloud_dir)
    client = FallbackClient(server.address, deadline_ms=5000)
    edge_ctx = params.EdgeContext(device_id="bench", model_version=model.version)
    request_bytes = build_request(hub_model, {input_name: x[:1]}, edge_ctx).ByteSize()
    answers: dict[str, list[int]] = {m: [] for m in SIDE_MODES}
    latency: dict[str, list[float]] = {m: [] for m in SIDE_MODES}
    calls = dict.fromkeys(SIDE_MODES, 0)

    def edge_answer(row: np.ndarray) -> tuple[int, bool]:
        scores = policy.score_array(model.session.run(model.runtime_feeds({input_name: row}))[0])
        return int(scores.labels[0]), bool(scores.confident[0])

    def hub_answer(row: np.ndarray, mode: str) -> int:
        calls[mode] += 1
        result = client.infer(hub_model, {input_name: row}, device_id="bench", model_version=model.version)
        return int(np.asarray(next(iter(result.outputs.values()))).reshape(len(row), -1)[0].argmax())

    def serve(mode: str, row: np.ndarray) -> int:
        if mode == "cloud-only":
            return hub_answer(row, mode)
        label, confident = edge_answer(row)
        return label if mode == "edge-only" or confident else hub_answer(row, mode)

    try:
        say(
            f"side-by-side: {len(x)} requests x {len(SIDE_MODES)} modes ({model.variant.id} on {profile}, "
            f"hub model {hub_model} at {server.address})"
        )
        for m in SIDE_MODES:  # warm each path once (sessions, channel), outside the figures
            serve(m, x[:1])
        calls = dict.fromkeys(SIDE_MODES, 0)
        orders = list(itertools.permutations(SIDE_MODES))  # each mode follows each other mode equally often
        for b, first in enumerate(range(0, len(x), BLOCK)):
            for mode in orders[b % len(orders)]:
                for i in range(first, min(first + BLOCK, len(x))):
                    row = x[i : i + 1]
                    start = time.perf_counter()
                    answers[mode].append(serve(mode, row))
                    latency[mode].append((time.perf_counter() - start) * 1000.0)
    finally:
        client.close()
        server.stop()
        model.close()
    modes = {m: summarize_mode(y, answers[m], latency[m], calls[m], calls[m] * request_bytes) for m in SIDE_MODES}
    return {
        "requests": int(len(x)),
        "edge_variant": model.variant.id,
        "profile": profile,
        "hub_model": hub_model,
        "hub_variant": server_variant(cloud_dir),
        "policy": policy_info,
        "request_bytes": request_bytes,
        "modes": modes,
        "targets": judge_side_by_side(modes),
    }


def server_variant(cloud_dir: Path) -> str | None:
    from tandem.protocols.manifest import load_manifest

    chosen = load_manifest(cloud_dir).variant_for_profile(HUB_PROFILE)
    return chosen.id if chosen is not None else None


def format_side_by_side(sbs: dict[str, Any]) -> list[str]:
    """The table a reader sees first: the same requests, three ways."""
    p = sbs["policy"]
    lines = [
        f"The same {sbs['requests']} requests, one at a time: edge {sbs['edge_variant']} ({sbs['profile']}), "
        f"hub {sbs['hub_model']} ({sbs['hub_variant']}); hybrid policy {p['kind']} threshold {p['threshold']:.3f} "
        f"({p['source']})",
        f"  {'mode':11} {'accuracy':>9} {'p50 ms':>8} {'p99 ms':>8} {'hub calls/1k':>13} {'bytes sent':>11}",
    ]
    for mode, m in sbs["modes"].items():
        lines.append(
            f"  {mode:11} {m['accuracy'] * 100:8.2f}% {m['p50_ms']:8.3f} {m['p99_ms']:8.3f} "
            f"{m['hub_calls_per_1000']:13.1f} {m['bytes_sent']:11d}"
        )
    for name, t in sbs["targets"].items():
        if name != "met":
            figure = ", ".join(f"{k} {v:.3f}" for k, v in t.items() if k != "met")
            lines.append(f"  target {name}: {figure}: {'met' if t['met'] else 'NOT met'}")
    return lines

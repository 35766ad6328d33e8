"""Model directories and small real ONNX models for the edge agent's tests.

`make_model_dir` writes what tandem-compile writes (manifest + one ONNX Runtime FP32
variant) so the agent tests do not depend on the compiler; swap it for
`model_compiler.pipeline.compile_model` here, in one place, when wanted.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tandem.protocols import topics
from tandem.protocols.manifest import FileEntry, Manifest, ProfileChoice, TensorSpec, Variant
from tandem.protocols.telemetry_codec import TelemetryWindow, decode_window

if TYPE_CHECKING:
    from tandem.edge_agent import Agent


def _specs(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from tandem.model_compiler.model_io import io_specs

    return io_specs(model)


def make_model_dir(
    onnx_path: Path,
    out: Path,
    *,
    name: str = "digits",
    version: str = "1.0.0",
    profile: str = "cpu-x86",
    variant_id: str = "ort-fp32",
) -> Path:
    """A compiled-model directory holding `onnx_path` as its only variant."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    (out / "variants").mkdir(exist_ok=True)
    rel = f"variants/{variant_id}.onnx"
    shutil.copyfile(onnx_path, out / rel)
    data = (out / rel).read_bytes()
    inputs, outputs = _specs(onnx.load(str(out / rel)))
    variant = Variant(
        id=variant_id,
        runtime="onnxruntime",
        precision="fp32",
        files=[FileEntry(path=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data))],
        inputs=inputs,
        outputs=outputs,
        profiles=[profile],
        options={"session": {"providers": ["CPUExecutionProvider"]}},
    )
    manifest = Manifest(
        name=name,
        version=version,
        created_at="2026-11-22T00:00:00Z",
        expires_at=None,
        task={"kind": "classification", "output": outputs[0].name},
        inputs=inputs,
        outputs=outputs,
        variants=[variant],
        profiles={profile: ProfileChoice(chosen=variant_id, reason="only variant")},
        target_profiles=[profile],
    )
    (out / "manifest.json").write_text(manifest.to_json())
    return out


def make_linear_softmax(
    path: Path, n_in: int = 4, n_out: int = 3, *, seed: int = 0, softmax: bool = True, batch: int | None = None
) -> Path:
    """A tiny MatMul(+Softmax) model with a dynamic batch axis (or a fixed one with `batch`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    dim = batch if batch is not None else "N"
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits" if softmax else "y"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, n_out])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def outbox_windows(agent: "Agent") -> list[TelemetryWindow]:
    """The agent's telemetry windows (its open one closed first), read back from its on-disk outbox.

    Only telemetry rows: the agent's telemetry thread also moves kept hard examples into the outbox
    on its ticks, so how many other rows sit there depends on how long a test ran."""
    agent.telemetry.flush()
    return [decode_window(p.payload) for p in agent.telemetry.outbox.next_batch() if p.kind == topics.TELEMETRY]


def free_port() -> int:
    """A loopback TCP port nobody listens on (for a dead hub or broker)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def digits_edge_and_cloud(digits_dir: Path, out: Path) -> tuple[Path, Path]:
    """Model dirs of the digits edge model (served by agents) and cloud model (served by the hub)."""
    edge = make_model_dir(digits_dir / "edge.onnx", out / "edge", name="digits")
    cloud = make_model_dir(digits_dir / "cloud.onnx", out / "cloud", name="digits-cloud")
    return edge, cloud

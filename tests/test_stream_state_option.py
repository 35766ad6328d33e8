"""`--task-option state=IN:OUT`: a stateful model whose state names follow no naming rule (`mem` ->
`carry`) is compiled with the pairing stated, checked against the graph (unknown names, dtype and
shape mismatches are one line each), and a real agent threads the stream's state by it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.errors import BadRequestError
from tandem.model_compiler.errors import CompileError
from tandem.model_compiler.pipeline import CompileOptions, compile_model
from tandem.tasks import TaskError, TaskSpec

from compile_fixtures import ORT_FP32, write_profile


def _model(path, carry_dims=("N", 4), carry_type=TensorProto.FLOAT):
    """y = x + mem; carry = y (the running sum a stream keeps)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    mem = helper.make_tensor_value_info("mem", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    carry = helper.make_tensor_value_info("carry", carry_type, list(carry_dims))
    nodes = [helper.make_node("Add", ["x", "mem"], ["y"])]
    if carry_type == TensorProto.FLOAT:
        nodes.append(helper.make_node("Identity", ["y"], ["carry"]))
    else:
        nodes.append(helper.make_node("Cast", ["y"], ["carry"], to=carry_type))
    graph = helper.make_graph(nodes, "sum", [x, mem], [y, carry])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _opts(tmp, model, state):
    rng = np.random.default_rng(0)
    data = tmp / "d.npz"
    if not data.exists():
        np.savez(data, x=rng.normal(size=(32, 4)).astype(np.float32), mem=rng.normal(size=(32, 4)).astype(np.float32))
    return CompileOptions(
        model=model,
        profiles=["ort-fp32"],
        calib=data,
        val=data,
        out=tmp / f"out-{model.stem}",
        signing_key=tmp / "k.pem",
        timing=False,
        profile_dirs=[tmp / "profiles"],
        task=TaskSpec("regression").with_options({"state": state}),
        force=True,
    )


@pytest.fixture()
def tmp(tmp_path):
    write_profile(tmp_path, ORT_FP32)
    return tmp_path


def test_stated_state_pairs_thread_a_stream(tmp):
    out = compile_model(_opts(tmp, _model(tmp / "sum.onnx"), "mem:carry")).out
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": out,
            "model.variant": "onnxruntime-fp32",
            "server.endpoint": f"ipc://{tmp}/a.sock",
            "hard_examples.data_dir": tmp / "data",
        }
    )
    one = np.ones((1, 4), np.float32)
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        sums = [client.infer({"x": one}, stream_id="s", return_outputs=True).outputs["y"][0, 0] for _ in range(3)]
        assert agent.service.streams.pairs == {"mem": "carry"}
    assert sums == [1.0, 2.0, 3.0]  # by name ("mem" + N/_out/...) no pair exists: a stream id would be refused


def test_state_option_is_checked_against_the_graph(tmp):
    good = _model(tmp / "sum.onnx")
    for state, why in (
        ("memo:carry", "'memo' is not an input"),
        ("mem:carried", "'carried' is not an output"),
    ):
        with pytest.raises(CompileError, match=why):
            compile_model(_opts(tmp, good, state))
    with pytest.raises(CompileError, match="shape"):
        compile_model(_opts(tmp, _model(tmp / "wide.onnx", carry_dims=("N", 5)), "mem:carry"))
    with pytest.raises(CompileError, match="int32"):
        compile_model(_opts(tmp, _model(tmp / "ints.onnx", carry_type=TensorProto.INT32), "mem:carry"))
    for text in ("mem", "mem:", ":carry"):
        with pytest.raises(TaskError, match="INPUT:OUTPUT"):
            TaskSpec("regression").with_options({"state": text})
    with pytest.raises(TaskError, match="named twice"):
        TaskSpec("regression").with_options({"state": "mem:a,mem:b"})


def test_without_the_option_a_stream_is_refused_for_this_model(tmp):
    opts = _opts(tmp, _model(tmp / "sum.onnx"), "mem:carry")
    opts.task = TaskSpec("regression")
    out = compile_model(opts).out
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": out,
            "model.variant": "onnxruntime-fp32",
            "server.endpoint": f"ipc://{tmp}/b.sock",
            "hard_examples.data_dir": tmp / "data",
        }
    )
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        with pytest.raises(BadRequestError, match="keeps no state"):
            client.infer({"x": np.ones((1, 4), np.float32)}, stream_id="s")
        assert agent.service.streams.pairs == {}

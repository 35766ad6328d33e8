"""Model files: only ONNX / OpenVINO IR / TFLite are opened, and an ONNX file's external
data must stay inside its folder (no absolute paths, no '..', no symlinks); nothing is unpickled.

The hostile files are real ONNX models written with `onnx`, then pointed elsewhere; the
good ones are run by ONNX Runtime through `load_session`, the path every loader takes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tandem.hardware_profiles.runtimes import ModelFileError, RuntimeUnavailableError, check_model_file, load_session
from tandem.hardware_profiles.runtimes.model_files import onnx_external_locations

ROOT = Path(__file__).resolve().parents[1]
W = np.arange(16, dtype=np.float32).reshape(4, 4)


def model_with_external_weights(folder: Path, location: str = "weights.bin", *, constant: bool = False) -> Path:
    """x @ w (w an initializer, or a Constant node's value) with w saved as external data."""
    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(W, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    if constant:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=w))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[] if constant else [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
        convert_attribute=True,
    )
    if location != "weights.bin":
        m = onnx.load(str(path), load_external_data=False)
        tensors = [a.t for n in m.graph.node for a in n.attribute if a.HasField("t")] + list(m.graph.initializer)
        for t in tensors:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(m, str(path))
    return path


def test_external_data_inside_the_folder_loads_and_runs(tmp_path):
    for constant in (False, True):
        path = model_with_external_weights(tmp_path / f"ok-{constant}", constant=constant)
        assert onnx_external_locations(path) == ["weights.bin"]
        session = load_session("onnxruntime", path)
        x = np.ones((1, 4), np.float32)
        np.testing.assert_allclose(session.run({"x": x})[0], x @ W)
        session.close()


@pytest.mark.parametrize(
    "location,why",
    [
        ("../outside.bin", "'..'"),
        ("sub/../../outside.bin", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:\\Windows\\win.ini", "absolute"),
        ("..\\outside.bin", "'..'"),
        ("missing.bin", "not found"),
    ],
)
def test_external_data_outside_the_folder_is_refused_before_the_runtime_opens_it(tmp_path, location, why):
    (tmp_path / "outside.bin").write_bytes(W.tobytes())  # it exists: only our check stands in the way
    for constant in (False, True):
        path = model_with_external_weights(tmp_path / f"m-{constant}", location, constant=constant)
        with pytest.raises(ModelFileError, match=re.escape(why)):
            load_session("onnxruntime", path)
        with pytest.raises(ModelFileError):
            load_session("openvino", path)


def test_symlinks_are_refused_for_weights_models_and_folders_on_the_way(tmp_path):
    path = model_with_external_weights(tmp_path / "m")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W.tobytes())
    weights = path.parent / "weights.bin"
    weights.unlink()
    os.symlink(secret, weights)
    with pytest.raises(ModelFileError, match="symlink"):
        check_model_file("onnxruntime", path)

    path2 = model_with_external_weights(tmp_path / "m2", "w/weights.bin")
    os.symlink(tmp_path, path2.parent / "w")  # w/ -> a folder outside that holds weights.bin
    (tmp_path / "weights.bin").write_bytes(W.tobytes())
    with pytest.raises(ModelFileError, match="symlink"):
        check_model_file("onnxruntime", path2)

    good = model_with_external_weights(tmp_path / "m3")
    link = tmp_path / "m3" / "alias.onnx"
    os.symlink(good, link)
    with pytest.raises(ModelFileError, match="symlink"):
        check_model_file("onnxruntime", link)


def test_a_symlinked_model_folder_itself_is_fine(tmp_path):
    """The OTA store may point at the active slot through a link; what is inside must be real."""
    good = model_with_external_weights(tmp_path / "slot-a")
    os.symlink(tmp_path / "slot-a", tmp_path / "current")
    assert check_model_file("onnxruntime", tmp_path / "current" / good.name)


@pytest.mark.parametrize(
    "runtime,name",
    [
        ("onnxruntime", "model.pkl"),
        ("onnxruntime", "model.npy"),
        ("onnxruntime", "model.pt"),
        ("openvino", "model.pickle"),
        ("litert", "model.onnx"),
        ("onnxruntime", "model.tflite"),
        ("nope", "m.onnx"),
    ],
)
def test_only_onnx_ir_and_tflite_files_are_opened(tmp_path, runtime, name):
    (tmp_path / name).write_bytes(b"\x80\x04not a model")
    with pytest.raises(ModelFileError):
        load_session(runtime, tmp_path / name)
    assert issubclass(ModelFileError, RuntimeUnavailableError)  # callers' existing handling applies


def test_ir_weights_beside_the_xml_must_be_a_real_file(tmp_path):
    (tmp_path / "model.xml").write_text("<net/>")
    os.symlink("/etc/hostname", tmp_path / "model.bin")
    with pytest.raises(ModelFileError, match="symlink"):
        check_model_file("openvino", tmp_path / "model.xml")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_the_onnx_scan_reads_any_bytes_without_crashing(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("scan") / "x.onnx"
    path.write_bytes(data)
    try:
        locations = onnx_external_locations(path)
    except ModelFileError:
        return
    assert isinstance(locations, list)


def test_nothing_is_ever_unpickled():
    """No pickle/joblib/torch.load in the packages, np.load there only with allow_pickle=False,
    and allow_pickle=True nowhere (tests, bench and sim included)."""
    packages = ["edge_agent", "cloud_hub", "protocols", "hardware_profiles", "model_compiler", "sim"]
    offenders = []
    for folder in [*packages, "tests", "bench", "examples"]:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == Path(__file__).name:
                continue
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(ROOT)
            if "allow_pickle=True" in text:
                offenders.append(f"{rel}: allow_pickle=True")
            if folder in packages:
                if (
                    re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|cloudpickle)\b", text, re.M)
                    or "torch.load(" in text
                ):
                    offenders.append(f"{rel}: unpickling import")
                for call in re.findall(r"np\.load\([^)]*\)", text):
                    # numpy's default is allow_pickle=False; production code says so explicitly
                    if folder != "sim" and "allow_pickle=False" not in call:
                        offenders.append(f"{rel}: {call} without allow_pickle=False")
    assert not offenders, offenders

"""protocols/inference.proto: wire-compatible with Triton's, and the committed modules are current."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.protocols import inference_pb2 as ours

MESSAGES = [
    "ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse", "ModelReadyRequest",
    "ModelReadyResponse", "ServerMetadataRequest", "ServerMetadataResponse", "ModelMetadataRequest",
    "ModelMetadataResponse", "InferParameter", "InferTensorContents", "ModelInferRequest", "ModelInferResponse",
]


def _fields(descriptor) -> dict:
    """name -> (number, type, repeated, message type, oneof), recursing into nested messages."""
    out = {}
    for f in descriptor.fields:
        out[f.name] = (f.number, f.type, f.label == f.LABEL_REPEATED if hasattr(f, "label") else f.is_repeated,
                       f.message_type.full_name if f.message_type else None,
                       f.containing_oneof.name if f.containing_oneof else None)
    for nested in descriptor.nested_types:
        out[nested.name] = _fields(nested)
    return out


@pytest.mark.parametrize("name", MESSAGES)
def test_messages_match_tritons_field_for_field(name):
    triton = pytest.importorskip("tritonclient.grpc.service_pb2")
    mine = ours.DESCRIPTOR.message_types_by_name[name]
    theirs = triton.DESCRIPTOR.message_types_by_name[name]
    assert mine.full_name == theirs.full_name == f"inference.{name}"
    assert _fields(mine) == _fields(theirs)


def test_service_methods_have_tritons_paths_and_types():
    triton = pytest.importorskip("tritonclient.grpc.service_pb2")
    mine = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert mine.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in mine.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == \
            (other.input_type.full_name, other.output_type.full_name)
    assert [m.name for m in mine.methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"]


def test_committed_modules_are_what_generate_py_writes(tmp_path):
    pytest.importorskip("grpc_tools")
    from tandem.protocols import generate

    here = Path(generate.__file__).parent
    for path in generate.generate(here / "inference.proto", out=tmp_path):
        committed = here / path.name
        assert path.read_text() == committed.read_text(), f"{committed} is stale: run python protocols/generate.py"

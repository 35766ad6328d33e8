"""protocols/inference.proto: wire-compatible with Triton's, and the committed modules are current."""

from __future__ import annotations

from pathlib import Path

import pytest

from dependencies import require_module
from tandem.protocols import inference_pb2 as ours

MESSAGES = [
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "InferParameter",
    "InferTensorContents",
    "ModelInferRequest",
    "ModelInferResponse",
]


def _fields(descriptor) -> dict:
    """name -> (number, type, repeated, message type, oneof), recursing into nested messages."""
    out = {}
    for f in descriptor.fields:
        out[f.name] = (
            f.number,
            f.type,
            f.label == f.LABEL_REPEATED if hasattr(f, "label") else f.is_repeated,
            f.message_type.full_name if f.message_type else None,
            f.containing_oneof.name if f.containing_oneof else None,
        )
    for nested in descriptor.nested_types:
        out[nested.name] = _fields(nested)
    return out


@pytest.mark.parametrize("name", MESSAGES)
def test_messages_match_tritons_field_for_field(name):
    triton = require_module("tritonclient.grpc.service_pb2")
    mine = ours.DESCRIPTOR.message_types_by_name[name]
    theirs = triton.DESCRIPTOR.message_types_by_name[name]
    assert mine.full_name == theirs.full_name == f"inference.{name}"
    assert _fields(mine) == _fields(theirs)


def test_service_methods_have_tritons_paths_and_types():
    triton = require_module("tritonclient.grpc.service_pb2")
    mine = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert mine.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in mine.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
    assert [m.name for m in mine.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    ]
    stream = mine.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming


# Served extras: every field we define is Triton's field (same number, type, label); Triton has more.
SUBSET_MESSAGES = [
    "ModelStreamInferResponse",
    "ModelConfigRequest",
    "ModelConfigResponse",
    "ModelStatisticsRequest",
    "ModelStatisticsResponse",
    "ModelStatistics",
    "StatisticDuration",
    "InferStatistics",
    "InferBatchStatistics",
    "MemoryUsage",
    "RepositoryIndexRequest",
    "RepositoryIndexResponse",
]
CONFIG_MESSAGES = ["ModelConfig", "ModelInput", "ModelOutput", "ModelDynamicBatching"]


def _is_subset(mine: dict, theirs: dict) -> bool:
    for name, value in mine.items():
        if name not in theirs:
            return False
        if isinstance(value, dict):
            if not _is_subset(value, theirs[name]):
                return False
        elif value != theirs[name]:
            return False
    return True


@pytest.mark.parametrize("name", SUBSET_MESSAGES + CONFIG_MESSAGES)
def test_extra_messages_are_wire_compatible_subsets_of_tritons(name):
    service = require_module("tritonclient.grpc.service_pb2")
    config = require_module("tritonclient.grpc.model_config_pb2")
    theirs = (config if name in CONFIG_MESSAGES else service).DESCRIPTOR.message_types_by_name[name]
    mine = ours.DESCRIPTOR.message_types_by_name[name]
    assert mine.full_name == theirs.full_name
    assert _is_subset(_fields(mine), _fields(theirs))


def test_datatype_enum_matches_tritons():
    config = require_module("tritonclient.grpc.model_config_pb2")
    mine = {v.name: v.number for v in ours.DESCRIPTOR.enum_types_by_name["DataType"].values}
    theirs = {v.name: v.number for v in config.DESCRIPTOR.enum_types_by_name["DataType"].values}
    assert mine == theirs


def test_committed_modules_are_what_generate_py_writes(tmp_path):
    require_module("grpc_tools")
    from tandem.protocols import generate

    here = Path(generate.__file__).parent
    for path in generate.generate(here / "inference.proto", out=tmp_path):
        committed = here / path.name
        assert path.read_text() == committed.read_text(), f"{committed} is stale: run python protocols/generate.py"

"""What the hub says about its models: v2 metadata, Triton-style config, statistics, repository index.

Pure functions from a served CloudModel (and its counters) to the protobuf answers;
gRPC returns them as they are and REST turns them into JSON with `to_json`, so both
doors describe a model identically.
"""

from __future__ import annotations

from typing import Any, Iterable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tandem.cloud_hub.inference.counters import ModelCounters
from tandem.cloud_hub.inference.model import CloudModel
from tandem.protocols import inference_pb2 as pb
from tandem.protocols.tensor_codec import datatype_of

_BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "tflite"}


def version_names(model: CloudModel) -> tuple[str, ...]:
    """The names a client may ask this model's version by: its semver, then the integer major Triton users send."""
    major = model.version.split(".", 1)[0]
    return (model.version, major) if major.isdigit() else (model.version,)


def statistics_version(model: CloudModel, asked: str = "") -> str:
    """The version a ModelStatistics entry names: the one the client asked by, else Triton's integer form.

    v2 load tools (Triton's perf_analyzer) parse statistics versions as integers and look
    the entry up again by that integer ("2.1.0" -> "2": "missing statistics for requested
    model"), so an answer for all versions names each model by its integer major when the
    semver has one; the semver stays in ModelMetadata and the repository index.
    """
    return asked or version_names(model)[-1]


def model_metadata(model: CloudModel) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(name=model.name, versions=[model.version], platform=model.platform)
    for specs, target in ((model.inputs, response.inputs), (model.outputs, response.outputs)):
        for spec in specs:
            target.add(name=spec.name, datatype=datatype_of(spec.dtype), shape=list(spec.shape))
    return response


def _config_type(dtype: str) -> int:
    name = datatype_of(dtype)
    return pb.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}")


def model_config(model: CloudModel) -> pb.ModelConfig:
    """Triton's ModelConfig view: with a batch axis, max_batch_size > 0 and dims leave that axis out."""
    batching = model.batcher.batching
    config = pb.ModelConfig(
        name=model.name,
        platform=model.platform,
        backend=_BACKENDS.get(model.variant.runtime, model.variant.runtime),
        max_batch_size=model.batcher.max_batch if batching else 0,
    )
    for spec in model.inputs:
        config.input.add(
            name=spec.name, data_type=_config_type(spec.dtype), dims=list(spec.shape[1:] if batching else spec.shape)
        )
    for spec in model.outputs:
        config.output.add(
            name=spec.name, data_type=_config_type(spec.dtype), dims=list(spec.shape[1:] if batching else spec.shape)
        )
    if batching:
        config.dynamic_batching.preferred_batch_size.append(model.batcher.max_batch)
        config.dynamic_batching.max_queue_delay_microseconds = int(model.batcher.window_s * 1e6)
    return config


def model_statistics(
    model: CloudModel, counters: ModelCounters, *, name: str = "", version: str = ""
) -> pb.ModelStatistics:
    """Triton's statistics for one model, named as the client asked (an alias, an integer version) or by default.

    `queue` is the micro-batcher's wait (count: requests that reached the runtime): perf_analyzer
    finds the model's entry by the queue count that grew while it measured. Compute times are
    not split into input/infer/output here, so those stay unset rather than guessed.
    """
    batcher = model.batcher.stats()
    stats = pb.ModelStatistics(
        name=name or model.name,
        version=statistics_version(model, version),
        last_inference=counters.last_inference_ms,
        inference_count=counters.rows,
        execution_count=batcher.batches,
    )
    stats.inference_stats.success.count = counters.success
    stats.inference_stats.success.ns = counters.success_ns
    stats.inference_stats.fail.count = counters.fail
    stats.inference_stats.fail.ns = counters.fail_ns
    stats.inference_stats.queue.count = batcher.started
    stats.inference_stats.queue.ns = batcher.queue_ns
    for size, count in sorted(batcher.batch_sizes.items()):
        entry = stats.batch_stats.add(batch_size=size)
        entry.compute_infer.count = count
    return stats


def repository_index(models: Iterable[CloudModel], ready: bool) -> pb.RepositoryIndexResponse:
    """Read-only: the models this hub serves (it loads them at start; nothing loads or unloads at run time)."""
    response = pb.RepositoryIndexResponse()
    for model in sorted(models, key=lambda m: m.name):
        response.models.add(
            name=model.name,
            version=model.version,
            state="READY" if ready else "UNAVAILABLE",
            reason="" if ready else "the hub is shutting down",
        )
    return response


_INT_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def to_json(message: Message) -> dict[str, Any]:
    """A message as v2 REST JSON: proto field names, 64-bit integers as numbers (json_format would quote them),
    enums by name, unset fields left out."""
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = {k: to_json(v) if isinstance(v, Message) else v for k, v in value.items()}
        elif _is_repeated(fd):
            out[fd.name] = [_scalar(fd, v) for v in value]
        else:
            out[fd.name] = _scalar(fd, value)
    return out


def _is_repeated(fd: FieldDescriptor) -> bool:
    if hasattr(fd, "is_repeated"):  # protobuf >= 5.28; older ones have `label`
        return bool(fd.is_repeated)
    return fd.label == FieldDescriptor.LABEL_REPEATED


def _scalar(fd: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, Message):
        return to_json(value)
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    if fd.type in _INT_TYPES:
        return int(value)
    return value

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SourceCounts(_message.Message):
    __slots__ = ("edge", "cloud", "edge_degraded", "error")
    EDGE_FIELD_NUMBER: _ClassVar[int]
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    EDGE_DEGRADED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    edge: int
    cloud: int
    edge_degraded: int
    error: int
    def __init__(self, edge: _Optional[int] = ..., cloud: _Optional[int] = ..., edge_degraded: _Optional[int] = ..., error: _Optional[int] = ...) -> None: ...

class SummaryCounts(_message.Message):
    __slots__ = ("input", "summary", "counts")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    input: str
    summary: str
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, input: _Optional[str] = ..., summary: _Optional[str] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class TaskSignalCounts(_message.Message):
    __slots__ = ("signal", "counts")
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    signal: str
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, signal: _Optional[str] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class TelemetryWindow(_message.Message):
    __slots__ = ("schema_version", "device_id", "sequence", "model_name", "model_version", "variant", "profile", "tags", "start_unix", "end_unix", "requests", "samples", "latency_counts", "latency_sum_ms", "latency_max_ms", "confidence_counts", "class_counts", "class_overflow", "inputs", "outbox_dropped_total", "input_samples", "outbox_dropped", "shadow_samples", "shadow_agree", "budget_spent", "task_signals", "agreement_counts", "agreement_sum")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OutboxDroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MAX_MS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    CLASS_OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    INPUT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SHADOW_AGREE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SPENT_FIELD_NUMBER: _ClassVar[int]
    TASK_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_COUNTS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_SUM_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    device_id: str
    sequence: int
    model_name: str
    model_version: str
    variant: str
    profile: str
    tags: _containers.ScalarMap[str, str]
    start_unix: float
    end_unix: float
    requests: SourceCounts
    samples: int
    latency_counts: _containers.RepeatedScalarFieldContainer[int]
    latency_sum_ms: float
    latency_max_ms: float
    confidence_counts: _containers.RepeatedScalarFieldContainer[int]
    class_counts: _containers.RepeatedScalarFieldContainer[int]
    class_overflow: int
    inputs: _containers.RepeatedCompositeFieldContainer[SummaryCounts]
    outbox_dropped_total: int
    input_samples: int
    outbox_dropped: _containers.ScalarMap[str, int]
    shadow_samples: int
    shadow_agree: int
    budget_spent: int
    task_signals: _containers.RepeatedCompositeFieldContainer[TaskSignalCounts]
    agreement_counts: _containers.RepeatedScalarFieldContainer[int]
    agreement_sum: float
    def __init__(self, schema_version: _Optional[int] = ..., device_id: _Optional[str] = ..., sequence: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., variant: _Optional[str] = ..., profile: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., start_unix: _Optional[float] = ..., end_unix: _Optional[float] = ..., requests: _Optional[_Union[SourceCounts, _Mapping]] = ..., samples: _Optional[int] = ..., latency_counts: _Optional[_Iterable[int]] = ..., latency_sum_ms: _Optional[float] = ..., latency_max_ms: _Optional[float] = ..., confidence_counts: _Optional[_Iterable[int]] = ..., class_counts: _Optional[_Iterable[int]] = ..., class_overflow: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[SummaryCounts, _Mapping]]] = ..., outbox_dropped_total: _Optional[int] = ..., input_samples: _Optional[int] = ..., outbox_dropped: _Optional[_Mapping[str, int]] = ..., shadow_samples: _Optional[int] = ..., shadow_agree: _Optional[int] = ..., budget_spent: _Optional[int] = ..., task_signals: _Optional[_Iterable[_Union[TaskSignalCounts, _Mapping]]] = ..., agreement_counts: _Optional[_Iterable[int]] = ..., agreement_sum: _Optional[float] = ...) -> None: ...

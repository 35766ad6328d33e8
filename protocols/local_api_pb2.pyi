from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_AUTO: _ClassVar[Mode]
    MODE_EDGE_ONLY: _ClassVar[Mode]
    MODE_CLOUD_ONLY: _ClassVar[Mode]

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_EDGE: _ClassVar[Source]
    SOURCE_CLOUD: _ClassVar[Source]
    SOURCE_EDGE_DEGRADED: _ClassVar[Source]
    SOURCE_ERROR: _ClassVar[Source]
MODE_AUTO: Mode
MODE_EDGE_ONLY: Mode
MODE_CLOUD_ONLY: Mode
SOURCE_UNSPECIFIED: Source
SOURCE_EDGE: Source
SOURCE_CLOUD: Source
SOURCE_EDGE_DEGRADED: Source
SOURCE_ERROR: Source

class TensorHeader(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class RequestOptions(_message.Message):
    __slots__ = ("threshold", "mode", "return_outputs")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RETURN_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    mode: Mode
    return_outputs: bool
    def __init__(self, threshold: _Optional[float] = ..., mode: _Optional[_Union[Mode, str]] = ..., return_outputs: _Optional[bool] = ...) -> None: ...

class RequestHeader(_message.Message):
    __slots__ = ("schema_version", "request_id", "model_name", "inputs", "options", "stream_id", "traceparent")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    request_id: str
    model_name: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorHeader]
    options: RequestOptions
    stream_id: str
    traceparent: str
    def __init__(self, schema_version: _Optional[int] = ..., request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorHeader, _Mapping]]] = ..., options: _Optional[_Union[RequestOptions, _Mapping]] = ..., stream_id: _Optional[str] = ..., traceparent: _Optional[str] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ReplyHeader(_message.Message):
    __slots__ = ("schema_version", "request_id", "source", "confidence", "label", "error", "latency_ms", "model_name", "model_version", "outputs", "detail", "threshold", "edge_confidence")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EDGE_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    request_id: str
    source: Source
    confidence: _containers.RepeatedScalarFieldContainer[float]
    label: _containers.RepeatedScalarFieldContainer[int]
    error: ErrorInfo
    latency_ms: float
    model_name: str
    model_version: str
    outputs: _containers.RepeatedCompositeFieldContainer[TensorHeader]
    detail: str
    threshold: float
    edge_confidence: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, schema_version: _Optional[int] = ..., request_id: _Optional[str] = ..., source: _Optional[_Union[Source, str]] = ..., confidence: _Optional[_Iterable[float]] = ..., label: _Optional[_Iterable[int]] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., latency_ms: _Optional[float] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[TensorHeader, _Mapping]]] = ..., detail: _Optional[str] = ..., threshold: _Optional[float] = ..., edge_confidence: _Optional[_Iterable[float]] = ...) -> None: ...

"""Size limits every decoder enforces before allocating: one home for them all.

A frame or request over a limit is rejected with a message naming the limit, so a
hostile or buggy peer cannot make the agent or the hub allocate unbounded memory.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_JSON_BODY_BYTES",
    "DEVICE_INFER_BURST",
    "DEVICE_INFER_PER_S",
    "DEVICE_TELEMETRY_BURST",
    "DEVICE_TELEMETRY_PER_S",
    "LOCAL_API_SCHEMA_VERSION",
    "MAX_ARTIFACT_BYTES",
    "MAX_BATCH_ROWS",
    "MAX_FRAMES",
    "MAX_GRPC_MESSAGE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HISTOGRAM_BINS",
    "MAX_MANIFEST_BYTES",
    "MAX_MQTT_PAYLOAD_BYTES",
    "MAX_OTA_MESSAGE_BYTES",
    "MAX_REPLY_HEADER_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_ID_CHARS",
    "MAX_STATUS_BYTES",
    "MAX_TAG_CHARS",
    "MAX_TELEMETRY_BYTES",
    "MAX_TELEMETRY_CLASSES",
    "MAX_TELEMETRY_SUMMARIES",
    "MAX_TELEMETRY_TAGS",
    "MAX_TENSORS_PER_REQUEST",
    "MAX_TENSOR_BYTES",
    "MAX_TENSOR_DIMS",
    "MAX_TENSOR_ELEMENTS",
    "MAX_V2_REST_BODY_BYTES",
    "MQTT_PACKET_OVERHEAD_BYTES",
    "RATE_LIMIT_MAX_DEVICES",
    "TELEMETRY_SCHEMA_VERSION",
    "WIRE_DTYPES",
    "ZMQ_MAX_MSG_BYTES",
]

# Tensors (protocols.tensor_codec: the hub's v2 gRPC endpoint and the fallback client).
MAX_TENSOR_DIMS = 8
MAX_TENSOR_ELEMENTS = 16 * 1024 * 1024
MAX_TENSOR_BYTES = 64 * 1024 * 1024
MAX_TENSORS_PER_REQUEST = 16

# gRPC message size, both directions (grpc's own default of 4 MiB is too small for
# e.g. a 3x960x960 FP32 OCR detection input).
MAX_GRPC_MESSAGE_BYTES = 80 * 1024 * 1024

# Local API (edge_agent.wire: ZeroMQ frames between applications and the agent).
# A request over a limit gets an error reply naming it; the agent keeps serving.
LOCAL_API_SCHEMA_VERSION = 1
MAX_FRAMES = 1 + MAX_TENSORS_PER_REQUEST  # 1 header frame + tensor frames
MAX_HEADER_BYTES = 64 * 1024  # the protobuf header frame
MAX_BATCH_ROWS = 65_536  # rows (leading axis) of one request; the reply carries a score per row
# A reply header holds per row a label (varint, at most 10 bytes), a confidence and an edge confidence
# (4 bytes each): sized so the largest batch allowed always round-trips.
MAX_REPLY_HEADER_BYTES = MAX_HEADER_BYTES + 24 * MAX_BATCH_ROWS
MAX_REQUEST_BYTES = MAX_TENSOR_BYTES  # all tensor frames of one request together
MAX_REQUEST_ID_CHARS = 128
# ZeroMQ drops (and disconnects) any frame larger than this before the agent sees it;
# a request between MAX_REQUEST_BYTES and this gets an error reply instead.
ZMQ_MAX_MSG_BYTES = 2 * MAX_REQUEST_BYTES
# dtypes the local API carries, by numpy name: every fixed-size dtype of the manifest (protocols.manifest.DTYPES
# but "bytes": a raw frame holds fixed-size elements). bfloat16 needs ml_dtypes on both ends.
WIRE_DTYPES = (
    "float32",
    "float16",
    "float64",
    "bfloat16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)

# Telemetry (protocols.telemetry_codec: agent windows over MQTT, decoded by the hub).
# A window over a limit is counted as bad and dropped by the hub; ingestion goes on.
TELEMETRY_SCHEMA_VERSION = 1
MAX_TELEMETRY_BYTES = 256 * 1024
MAX_TELEMETRY_CLASSES = 4096  # class_counts entries; larger class indices go to class_overflow
MAX_TELEMETRY_SUMMARIES = 64  # (input, summary) histograms per window
MAX_HISTOGRAM_BINS = 256
MAX_TELEMETRY_TAGS = 32
MAX_TAG_CHARS = 128

# MQTT (the broker's message_size_limit, and what every Tandem MQTT consumer accepts).
# Telemetry windows and OTA commands/status are each far smaller; the broker drops bigger.
MAX_MQTT_PAYLOAD_BYTES = 1024 * 1024
MQTT_PACKET_OVERHEAD_BYTES = 64 * 1024  # topic + MQTT 5 properties on top of the payload (max_packet_size)

# Per-device rate limits at the hub (cloud_hub.ratelimit token buckets, keyed by device id).
# Telemetry: the burst holds a full day's outbox backlog (edge_agent's 8640 windows) so a
# device back from an outage drains it; beyond that a flood is dropped at RATE per second.
DEVICE_TELEMETRY_PER_S = 20.0
DEVICE_TELEMETRY_BURST = 2 * 8640
# gRPC fallback ModelInfer per authenticated device (client-certificate CN): beyond it,
# RESOURCE_EXHAUSTED, which the agent answers locally (degraded) without retrying.
DEVICE_INFER_PER_S = 200.0
DEVICE_INFER_BURST = 400
# How many devices' buckets a hub keeps; the idlest are forgotten first (memory bound).
RATE_LIMIT_MAX_DEVICES = 100_000

# Artifacts: the largest single model file an agent downloads or the hub stores.
MAX_ARTIFACT_BYTES = 2 * 1024 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a signed manifest fetched by an agent

# OTA messages over MQTT (protocols.ota) and the retained /status payload (telemetry_codec).
MAX_OTA_MESSAGE_BYTES = 16 * 1024
MAX_STATUS_BYTES = 4096

# -- hub REST request bodies (cloud_hub/rest/body_limit.py) ---------------------------------
DEFAULT_MAX_JSON_BODY_BYTES = 1024 * 1024  # every JSON body but uploads; HubConfig.http.max_json_body_bytes
MAX_V2_REST_BODY_BYTES = MAX_GRPC_MESSAGE_BYTES  # Open Inference Protocol REST: tensors as JSON

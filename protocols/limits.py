"""Size limits every decoder enforces before allocating: one home for them all.

A frame or request over a limit is rejected with a message naming the limit, so a
hostile or buggy peer cannot make the agent or the hub allocate unbounded memory.
"""

from __future__ import annotations

# Tensors (protocols.tensor_codec: the hub's v2 gRPC endpoint and the fallback client).
MAX_TENSOR_DIMS = 8
MAX_TENSOR_ELEMENTS = 16 * 1024 * 1024
MAX_TENSOR_BYTES = 64 * 1024 * 1024
MAX_TENSORS_PER_REQUEST = 16

# gRPC message size, both directions (grpc's own default of 4 MiB is too small for
# e.g. a 3x960x960 FP32 OCR detection input).
MAX_GRPC_MESSAGE_BYTES = 80 * 1024 * 1024

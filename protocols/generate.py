"""Regenerate the committed *_pb2.py / *_pb2_grpc.py modules from protocols/*.proto.

protoc writes `import foo_pb2` in the gRPC stubs, which only works with protocols/ on
sys.path; we rewrite it to `from tandem.protocols import foo_pb2` so the package imports
cleanly. Usage: python protocols/generate.py [NAME.proto ...]  (default: every .proto).
Needs grpcio-tools (dev extra).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fix_imports(text: str) -> str:
    """Make protoc's flat `import x_pb2 as ...` lines package-relative to `protocols`."""
    return re.sub(r"^import (\w+_pb2) as ", r"from tandem.protocols import \1 as ", text, flags=re.MULTILINE)


# `inference` is also the package of Triton's and KServe's own generated modules
# (tritonclient registers grpc_service.proto in the default descriptor pool), so
# ours goes into a private pool: both can live in one process, and the wire format
# and the gRPC method paths (/inference.GRPCInferenceService/...) stay identical.
PRIVATE_POOL = {"inference.proto"}


def use_private_pool(text: str) -> str:
    """Register the file in a pool of its own instead of the process-wide default."""
    marker = "_descriptor_pool.Default().AddSerializedFile("
    if marker not in text:
        raise SystemExit("protoc output changed: cannot find the default-pool registration to rewrite")
    return text.replace(marker, "_descriptor_pool.DescriptorPool().AddSerializedFile(", 1)


def generate(proto: Path, out: Path = HERE) -> list[Path]:
    """Run protoc on `proto` (inside protocols/), writing the modules to `out`."""
    from grpc_tools import protoc

    args = ["protoc", f"-I{HERE}", f"--python_out={out}", f"--pyi_out={out}", str(proto)]
    has_service = "service " in proto.read_text()
    if has_service:
        args.insert(3, f"--grpc_python_out={out}")
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {proto.name}")
    written = [out / f"{proto.stem}_pb2.py", out / f"{proto.stem}_pb2.pyi"]
    if has_service:
        written.append(out / f"{proto.stem}_pb2_grpc.py")
    for path in written:
        text = fix_imports(path.read_text())
        if path.suffix == ".py" and path.name.endswith("_pb2.py") and proto.name in PRIVATE_POOL:
            text = use_private_pool(text)
        path.write_text(text)
    return written


def main(argv: list[str]) -> int:
    protos = [HERE / name for name in argv] if argv else sorted(HERE.glob("*.proto"))
    for proto in protos:
        for path in generate(proto):
            print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What security costs: ModelInfer round trips over plain gRPC vs mutual TLS (with the per-call
certificate gate), and the model-file check vs opening the model, measured side by side in one run.

    python bench/security.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent_fixtures import make_linear_softmax, make_model_dir  # noqa: E402
from tandem.cloud_hub.inference import InferenceServer  # noqa: E402
from tandem.cloud_hub.pki import Pki  # noqa: E402
from tandem.edge_agent.fallback import FallbackClient  # noqa: E402
from tandem.hardware_profiles.runtimes import check_model_file, load_session  # noqa: E402


def infer_ms(url: str, tls, n: int) -> list[float]:
    x = np.ones((1, 4), np.float32)
    out = []
    with FallbackClient(url, deadline_ms=5000, tls=tls) as client:
        for _ in range(20):  # warm: connection, handshake
            client.infer("lin", {"x": x}, device_id="dev-a", model_version="1")
        for _ in range(n):
            t = time.perf_counter()
            client.infer("lin", {"x": x}, device_id="dev-a", model_version="1")
            out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pki = Pki.init(tmp / "pki")
        pki.issue_device("dev-a")
        model_dir = make_model_dir(make_linear_softmax(tmp / "lin.onnx"), tmp / "lin", name="lin")
        plain = InferenceServer([model_dir], port=0)
        secure = InferenceServer(
            [model_dir], port=0, tls=pki.hub_server_files(), device_rate_per_s=1e9, device_burst=10**9
        )
        plain.start()
        secure.start()
        try:
            rounds = {"plain": [], "mtls": []}
            for _ in range(3):  # interleaved rounds: a shared, noisy host
                rounds["plain"] += infer_ms(f"grpc://{plain.address}", None, args.n // 3)
                rounds["mtls"] += infer_ms(f"grpcs://{secure.address}", pki.device_files("dev-a"), args.n // 3)
        finally:
            plain.stop()
            secure.stop()
        model = next((model_dir / "variants").glob("*.onnx"))
        t = time.perf_counter()
        for _ in range(200):
            check_model_file("onnxruntime", model)
        check_us = (time.perf_counter() - t) / 200 * 1e6
        t = time.perf_counter()
        for _ in range(20):
            load_session("onnxruntime", model).close()
        load_us = (time.perf_counter() - t) / 20 * 1e6
    p50 = {k: statistics.median(v) for k, v in rounds.items()}
    p99 = {k: float(np.percentile(v, 99)) for k, v in rounds.items()}
    report = {
        "requests_per_mode": len(rounds["plain"]),
        "infer_p50_ms": p50,
        "infer_p99_ms": p99,
        "mtls_over_plain_p50": p50["mtls"] / p50["plain"],
        "mtls_over_plain_p99": p99["mtls"] / p99["plain"],
        "model_file_check_us": check_us,
        "load_session_us": load_us,
        "check_over_load": check_us / load_us,
    }
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

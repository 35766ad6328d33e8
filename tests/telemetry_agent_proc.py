"""A device's telemetry side in its own process, for the crash tests: records synthetic
answered requests at a steady rate until SIGTERM (graceful stop) or SIGKILL."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import numpy as np

from tandem.protocols.stop_signal import StopSignal
from tandem.edge_agent.telemetry import ModelInfo, PublisherConfig, TelemetryService

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mqtt-url", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--window-s", type=float, default=0.2)
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--keepalive", type=int, default=10, help="MQTT keepalive (the will fires after 1.5x)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    stop = StopSignal([signal.SIGTERM]).install()  # Event.set() in a handler can deadlock
    model = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")
    rng = np.random.default_rng()
    service = TelemetryService(
        args.mqtt_url,
        args.device,
        model,
        args.data_dir,
        window_s=args.window_s,
        profile="cpu-x86",
        tags={"site": "lab"},
        publisher=PublisherConfig(mqtt_url=args.mqtt_url, keepalive_s=args.keepalive),
    ).start()
    print("ready", flush=True)
    period = 1.0 / args.rate
    while not stop.wait(period):
        service.record(
            "edge",
            float(rng.uniform(1, 20)),
            confidence=float(rng.uniform(0.8, 1.0)),
            label=int(rng.integers(0, 3)),
            inputs=rng.normal(size=(1, 8)).astype(np.float32),
        )
    service.stop(drain_timeout_s=10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

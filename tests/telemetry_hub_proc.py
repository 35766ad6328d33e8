"""The hub's telemetry ingestion in its own process, for the crash tests: runs until SIGTERM
(graceful) or SIGKILL; prints `ready` once subscribed."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from tandem.protocols.stop_signal import StopSignal
from tandem.cloud_hub.telemetry import TelemetryIngestService, TelemetryServiceConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mqtt-url", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--share-group", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    stop = StopSignal([signal.SIGTERM]).install()  # Event.set() in a handler can deadlock
    service = TelemetryIngestService(
        args.data_dir,
        args.mqtt_url,
        lambda name, version: None,
        TelemetryServiceConfig(eval_interval_s=3600, ingest={"share_group": args.share_group}),
    )
    service.start()
    if not service.ingest.wait_subscribed(10):
        return 1
    print("ready", flush=True)
    stop.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

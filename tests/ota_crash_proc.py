"""Child process for test_ota_crash: open (recover) a device store, then run one update.

Prints READY once the store is open, and `STEP <name>` at each OTA step, flushed, so the
parent knows where it was when it sent SIGKILL. argv: store_dir job.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tandem.edge_agent.ota.download import DownloadConfig
from tandem.edge_agent.ota.machine import HealthFigures, WatchPolicy
from tandem.edge_agent.ota.store import ModelStore
from tandem.edge_agent.ota.updater import Updater, UpdaterConfig
from tandem.protocols.ota import OtaCommand
from tandem.protocols.signing import load_public_key


def main() -> int:
    store_dir, job_path = Path(sys.argv[1]), Path(sys.argv[2])
    job = json.loads(job_path.read_text())
    store = ModelStore(store_dir)
    recovery = store.open()
    print(f"READY active={store.active_version} rolled_back_trial={bool(recovery.rolled_back_trial)}", flush=True)
    config = UpdaterConfig(
        job["profile"],
        DownloadConfig(token=job["token"], rate_limit_bps=job["rate_bps"], chunk_bytes=4096),
        WatchPolicy(watch_s=job["watch_s"], min_requests=1),
        poll_s=0.02,
    )
    updater = Updater(
        store,
        load_public_key(job["public_pem"]),
        config,
        on_switch=lambda path: None,
        publish=lambda step, result, reason, health: print(f"STEP {step} {reason[:120]}", flush=True),
        health=lambda: HealthFigures(10, 0, 0, 1.0),
    )
    state = updater.run(OtaCommand(**job["command"]))
    print(f"DONE {state} active={store.active_version}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

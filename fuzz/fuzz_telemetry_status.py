"""atheris target: telemetry_status (fuzz/harness.py says which decoder and which error it may raise).

Run: `make fuzz` (all targets, FUZZ_SECONDS each) or `python fuzz/fuzz_telemetry_status.py -max_total_time=60`.
"""

import sys

from atheris_main import fuzz_main

if __name__ == "__main__":
    sys.exit(fuzz_main("telemetry_status"))

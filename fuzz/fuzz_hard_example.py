"""atheris target: hard_example (fuzz/harness.py says which decoder and which error it may raise).

Run: `make fuzz` (all targets, FUZZ_SECONDS each) or `python fuzz/fuzz_hard_example.py -max_total_time=60`.
"""

from __future__ import annotations

import sys

NAME = "hard_example"


def test_one_input(data: bytes) -> None:
    import harness  # instrumented on first import, in main()

    harness.run_one(NAME, data)


def main() -> int:
    try:
        import atheris
    except ImportError:
        print(f"fuzz_{NAME}: atheris is not installed (pip install atheris); skipping", file=sys.stderr)
        return 0
    with atheris.instrument_imports(include=["protocols", "edge_agent", "harness"]):
        import harness  # noqa: F401
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

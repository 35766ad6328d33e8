"""The one atheris entry point every fuzz/fuzz_*.py target calls: instrument the decoders, then fuzz one.

Kept apart from harness.py on purpose: this module imports nothing of ours at the top, so
`harness` and the packages under test are first imported inside `instrument_imports`.
"""

from __future__ import annotations

import sys


def fuzz_main(name: str) -> int:
    """Fuzz harness.run_bytes(name, data) until atheris stops (its flags come from sys.argv)."""
    try:
        import atheris
    except ImportError:
        print(f"fuzz_{name}: atheris is not installed (pip install atheris); skipping", file=sys.stderr)
        return 0
    with atheris.instrument_imports(include=["protocols", "edge_agent", "harness"]):
        import harness

    def test_one_input(data: bytes) -> None:
        harness.run_bytes(name, data)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
    return 0

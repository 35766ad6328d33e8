"""Run every fuzz/fuzz_*.py target for FUZZ_SECONDS each (the `make fuzz` target); skips without atheris.

A crash fails the run and leaves the input under FUZZ_CORPUS (default $TMPDIR/tandem-fuzz).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    seconds = int(os.environ.get("FUZZ_SECONDS", "30"))
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("make fuzz: atheris is not installed (pip install -e '.[dev]' on CPython 3.8-3.11); skipping")
        return 0
    # Outside the checkout, so runs leave no untracked files; FUZZ_CORPUS keeps one across runs.
    corpus_root = Path(os.environ.get("FUZZ_CORPUS", Path(tempfile.gettempdir()) / "tandem-fuzz"))
    failed = []
    for target in sorted(HERE.glob("fuzz_*.py")):
        corpus = corpus_root / target.stem
        corpus.mkdir(parents=True, exist_ok=True)
        print(f"== {target.name}: {seconds}s", flush=True)
        rc = subprocess.call(
            [
                sys.executable,
                str(target),
                f"-max_total_time={seconds}",
                "-rss_limit_mb=2048",
                f"-artifact_prefix={corpus_root}/{target.stem}-",
                str(corpus),
            ]
        )
        if rc != 0:
            failed.append(target.name)
    if failed:
        print(f"make fuzz: crashes in {', '.join(failed)} (inputs saved under {corpus_root})")
        return 1
    print("make fuzz: no crashes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tandem-agent command line (placeholder until its issue lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("tandem-agent: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""tandem-sim: the simulator's command line. `tandem-sim demo` is the README's main job."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from sim.demo import format_summary, run_demo

    summary = run_demo(args.workdir, say=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)))
    print(format_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem-sim", description="Tandem's hardware and fleet simulator.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, compile and run the digits demo end to end on this machine")
    demo.add_argument("--workdir", type=Path, default=Path("tandem-demo"), help="where everything is written (default: ./tandem-demo)")
    demo.add_argument("--quiet", action="store_true", help="print only the final summary")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("tandem-sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

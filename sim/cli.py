"""tandem-sim: the simulator's command line. `tandem-sim demo` is the README's main job."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import tandem
from tandem.protocols.cli_options import add_log_level, configure_logging, os_error_line

EPILOG = """\
examples:
  tandem-sim list                                   the built-in scenarios
  tandem-sim run drift --report out/drift           run one, write out/drift/report.md + plots
  tandem-sim run steady --devices 200 --duration 60 --report out/steady
  tandem-sim run my-scenario.yaml --report out/mine
  tandem-sim demo                                   train, compile, run a mixed fleet (a few minutes)
"""


class _Progress:
    """The live progress line: redrawn in place on a terminal; in a log (CI, `make demo > log`) one plain
    line per `log_every_s` instead of thousands of carriage returns, and every event line as it happens."""

    def __init__(self, stream: Any = None, log_every_s: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr  # looked up now: tests and tools swap it
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every_s = log_every_s
        self._last = float("-inf")

    def __call__(self, message: str) -> None:
        if not self.tty:
            text = message.replace("\r", "").replace("\033[K", "")
            if not text.strip():
                return
            redraw = not message.endswith("\n")
            if redraw:
                now = time.monotonic()
                if now - self._last < self.log_every_s:
                    return
                self._last = now
            message = text.rstrip("\n") + "\n"
        self.stream.write(message)
        self.stream.flush()


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda m: None) if quiet else _Progress()


def _demo(args: argparse.Namespace) -> int:
    from tandem.sim.demo import format_summary, run_demo

    summary = run_demo(
        args.workdir,
        say=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)),
        progress=_say(args.quiet),
    )
    print(format_summary(summary))
    return 0 if summary.get("passed", True) else 1


def _list(args: argparse.Namespace) -> int:
    from tandem.sim.scenario import builtin_names, load_scenario

    for name in builtin_names():
        sc = load_scenario(name)
        print(f"{name:14} {sc.device_count:4d} devices {sc.duration_s:5.0f}s  {_first_sentence(sc.description)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from tandem.sim.report import write_report
    from tandem.sim.runner import run_scenario
    from tandem.sim.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario).scaled(args.devices, args.duration)
    except ScenarioError as exc:
        print(f"tandem-sim: {exc}", file=sys.stderr)
        return 2
    report = args.report or Path("tandem-sim-reports") / scenario.name
    say = _say(args.quiet)
    say(
        f"running {scenario.name}: {scenario.device_count} devices for {scenario.duration_s:g}s "
        f"(work dir {args.workdir})\n"
    )
    result = run_scenario(scenario, args.workdir, data_dir=args.data_dir, progress=say)
    path = write_report(result, report)
    for c in result.checks:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
    print(f"report: {path}")
    return 0 if result.passed else 1


def _first_sentence(text: str) -> str:
    """Up to the first '. ' (so version numbers like 1.1.0 stay whole)."""
    head, sep, _ = text.strip().partition(". ")
    return head + "." if sep else head


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem-sim",
        description="Tandem's hardware and fleet simulator: virtual "
        "devices running the real agent logic against a real hub and broker.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {tandem.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train, compile and run a mixed fleet through drift and a canary rollout",
        description="Train the digits models, compile them, start a hub and broker, and run a mixed fleet\n"
        "through drift and a canary rollout (a few minutes); the report, with plots, is <workdir>/report.",
        epilog="example:\n  tandem-sim demo --workdir /tmp/tandem-demo --quiet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--workdir", type=Path, default=Path("tandem-demo"), help="where everything is written (default: ./tandem-demo)"
    )
    demo.add_argument("--quiet", action="store_true", help="print only the final summary")
    demo.set_defaults(handler=_demo)

    run = sub.add_parser(
        "run",
        help="run a scenario and write its report",
        description="Run a scenario (a built-in name or a YAML file) against a fresh hub and broker.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("scenario", help="built-in name (see `tandem-sim list`) or path to a scenario .yaml")
    run.add_argument("--report", type=Path, help="report folder (default: tandem-sim-reports/<scenario>)")
    run.add_argument("--devices", type=int, help="total devices, groups kept in proportion")
    run.add_argument("--duration", type=float, help="seconds of simulated traffic; event times scale with it")
    run.add_argument(
        "--workdir",
        type=Path,
        default=Path("tandem-sim-work"),
        help="models, hub data and device outboxes (default: ./tandem-sim-work; models are cached)",
    )
    run.add_argument("--data-dir", type=Path, help="an examples/digits/train.py output to use instead of training")
    run.add_argument("--quiet", action="store_true", help="no live progress line")
    run.set_defaults(handler=_run)

    lst = sub.add_parser(
        "list",
        help="list the built-in scenarios",
        description="The built-in scenarios: name, devices, duration and what each one shows.",
        epilog="example:\n  tandem-sim list\n  tandem-sim run drift --report out/drift",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lst.set_defaults(handler=_list)
    return add_log_level(parser, "error")


def absolute_paths(args: argparse.Namespace) -> argparse.Namespace:
    """Relative --workdir/--report/--data-dir against the current folder, once: the paths are written into
    each agent's config, where a relative one would be read against that config's own folder."""
    for name in ("workdir", "report", "data_dir"):
        value = getattr(args, name, None)
        if isinstance(value, Path):
            setattr(args, name, value.resolve())
    return args


def main(argv: list[str] | None = None) -> int:
    args = absolute_paths(build_parser().parse_args(argv))
    configure_logging(args, "%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except OSError as exc:  # a --workdir or --report that is a file, no permission, a full disk: one line
        logging.getLogger(__name__).debug("file error", exc_info=True)
        print(f"tandem-sim: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tandem-sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

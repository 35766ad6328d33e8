"""Command-line conventions every tandem-* command shares, defined once: `--log-level`.

The same flag on tandem-agent, tandem-hub, tandem-compile and tandem-sim: values in any case (debug, INFO,
Warning, error), accepted before the subcommand or after it, the later one winning.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
from pathlib import Path
from typing import Any

__all__ = [
    "LOG_LEVELS",
    "PRECEDENCE",
    "add_action",
    "add_log_level",
    "configure_logging",
    "log_level_of",
    "os_error_line",
    "parse_log_level",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
# The one precedence rule for settings, said the same way in every --help epilog and in the docs.
PRECEDENCE = "precedence: command-line flag > environment variable > config file > built-in default"
_DEST = "log_level"


def parse_log_level(value: str) -> str:
    """argparse `type=`: a level name in any case, returned lower-case."""
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a log level: use one of {', '.join(LOG_LEVELS)} (any case)")
    return level


def add_log_level(parser: argparse.ArgumentParser, default: str = "warning") -> argparse.ArgumentParser:
    """Add --log-level to `parser` and to every subcommand under it (after they are all built).

    Subcommands default to argparse.SUPPRESS, so a value given before the subcommand is not reset by the
    subparser; `configure_logging` falls back to `default` (or a subcommand's own `default_log_level`)."""
    help_text = f"{', '.join(LOG_LEVELS)} (any case; before or after the subcommand; default {default})"
    for p in _parsers(parser):
        if any(_DEST == a.dest for a in p._actions):
            raise ValueError(f"{p.prog}: --log-level is added by add_log_level, not by hand")
        p.add_argument(
            "--log-level", type=parse_log_level, default=argparse.SUPPRESS, metavar="LEVEL", dest=_DEST, help=help_text
        )
    parser.set_defaults(default_log_level=default)
    return parser


def configure_logging(args: argparse.Namespace, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> str:
    """logging.basicConfig at the level the command line asked for; returns the level name used."""
    level = log_level_of(args)
    logging.basicConfig(level=level.upper(), format=fmt)
    return level


def log_level_of(args: argparse.Namespace) -> str:
    """The level parsed `args` ask for: --log-level wherever it was given, else the command's default."""
    return str(getattr(args, _DEST, None) or getattr(args, "default_log_level", "warning"))


def add_action(actions: Any, name: str, summary: str, *examples: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does (`summary`, also its line in the parent's list) and shows
    how it is called (`examples`, one command line each), so no leaf command answers --help with flags alone."""
    lines = "\n".join(f"  {e}" for e in examples)
    parser: argparse.ArgumentParser = actions.add_parser(
        name,
        help=summary,
        description=kwargs.pop("description", summary[:1].upper() + summary[1:] + "."),
        epilog=f"example{'s' if len(examples) > 1 else ''}:\n{lines}" if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    return parser


def os_error_line(exc: OSError) -> str:
    """One line for a file-system error a command met (a file where a folder must be, no permission, a full
    disk): the path first, then what is wrong with it, so every tandem-* command says it the same way and
    never with a traceback. A file in the way of a folder is named as such: the OS only says "File exists"
    or "Not a directory" about a path below it."""
    if exc.filename is None:
        return exc.strerror or str(exc)
    path = Path(os.fsdecode(exc.filename))
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        for candidate in (path, *path.parents):
            if candidate.exists() and not candidate.is_dir():
                return f"{candidate}: is a file, not a folder"
    return f"{path}: {exc.strerror or exc}"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every subparser below it, depth first, each once."""
    out: list[argparse.ArgumentParser] = []
    todo = [parser]
    while todo:
        p = todo.pop()
        if any(p is seen for seen in out):
            continue
        out.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return out

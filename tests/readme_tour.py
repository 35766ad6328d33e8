"""Turn a markdown walkthrough's ```bash blocks into one bash script a test can run as a newcomer would.

The convention the docs follow (README.md "A short tour", docs/security.md's walkthrough):
- only ```bash blocks inside the named section are the tour; ```sh blocks are illustrations;
- the blocks run in order, in one shell (exports and `$!` carry over), stopping at the first failure;
- a line ending in `&` starts a daemon and must send its output to a file (`> hub.log 2>&1 &`); the
  script then waits for that file's `serving` line (the line the daemon prints when ready, which the
  docs tell a reader to wait for), failing at once with the log if the daemon exits first.
Nothing in the text is rewritten: ports and paths move only through variables the docs name.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

__all__ = ["Step", "TourError", "section_blocks", "steps", "tour_script"]

READY_RE = r"^tandem-(hub|agent):? serving"
FENCE_RE = re.compile(r"^```(\w*)\s*$")


class TourError(ValueError):
    """The document breaks the convention: the message says where."""


@dataclass(frozen=True)
class Step:
    """One logical command (continuation lines joined) and, for a daemon, the log file it writes."""

    text: str
    background_log: str | None = None


def section_blocks(markdown: str, heading: str) -> list[str]:
    """The ```bash blocks between `heading` (a full heading line, e.g. "## A short tour") and the next
    heading of the same or a higher level."""
    lines = markdown.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise TourError(f"no heading line {heading!r}") from None
    level = len(heading) - len(heading.lstrip("#"))
    blocks: list[str] = []
    current: list[str] | None = None
    fence_lang = ""
    for line in lines[start + 1 :]:
        fence = FENCE_RE.match(line)
        if current is None and fence_lang == "" and line.startswith("#"):
            depth = len(line) - len(line.lstrip("#"))
            if depth <= level and line[depth : depth + 1] == " ":
                break
        if fence and current is None and not fence_lang:
            fence_lang = fence.group(1) or "text"
            current = [] if fence_lang == "bash" else None
            continue
        if fence and fence.group(1) == "" and fence_lang:
            if current is not None:
                blocks.append("\n".join(current))
            current, fence_lang = None, ""
            continue
        if current is not None:
            current.append(line)
    if not blocks:
        raise TourError(f"no ```bash block under {heading!r}")
    return blocks


def _background_log(text: str) -> str | None:
    """The redirect target of a command that ends in a lone `&`, or None for a foreground command."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.commenters = "#"
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise TourError(f"cannot read the command {text!r}: {exc}") from None
    if not tokens or tokens[-1] != "&":
        return None
    for i, token in enumerate(tokens):
        if token == ">" and i + 1 < len(tokens):
            return tokens[i + 1]
    raise TourError(f"a daemon line must send its output to a log file (`> NAME.log 2>&1 &`): {text!r}")


def steps(blocks: list[str]) -> list[Step]:
    """Logical commands in order: backslash continuations joined, blank and comment-only lines dropped."""
    out: list[Step] = []
    pending = ""
    for block in blocks:
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            text = (pending + line).strip()
            pending = ""
            if not text or text.startswith("#"):
                continue
            out.append(Step(text, _background_log(text)))
        if pending:
            raise TourError(f"a block ends inside a continued line: {pending!r}")
    return out


def tour_script(tour: list[Step], pids_file: str, ready_timeout_s: int = 180) -> str:
    """One bash script: each step announced on stderr (`TOUR STEP n: ...`), daemons' pids appended to
    `pids_file` (so the test can stop whatever the tour leaves running), `set -e -o pipefail`."""
    out = [
        "set -e -o pipefail",
        "tour_ready() {  # log pid: wait for the daemon's serving line, or fail with its log",
        f"  local deadline=$((SECONDS + {ready_timeout_s}))",
        f'  until grep -qE {shlex.quote(READY_RE)} "$1" 2>/dev/null; do',
        '    if ! kill -0 "$2" 2>/dev/null; then echo "TOUR: daemon $2 exited before serving; $1:" >&2;'
        ' cat "$1" >&2; exit 97; fi',
        '    if ((SECONDS > deadline)); then echo "TOUR: no serving line in $1" >&2; cat "$1" >&2; exit 98; fi',
        "    sleep 0.3",
        "  done",
        "}",
    ]
    for n, step in enumerate(tour, 1):
        out.append(f"printf '%s\\n' {shlex.quote(f'TOUR STEP {n}: {step.text}')} >&2")
        out.append(step.text)
        if step.background_log is not None:
            out.append(f"echo $! >> {shlex.quote(pids_file)}")
            out.append(f'tour_ready {shlex.quote(step.background_log)} "$!"')
    out.append("printf 'TOUR DONE\\n' >&2")
    return "\n".join(out) + "\n"

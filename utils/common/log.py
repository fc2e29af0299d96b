"""Where the scripts' messages go, so that a terminal and a cluster job's log
file both read well.

Results and notes go to stdout; warnings and errors to stderr, one line each.
``--quiet`` keeps warnings and errors only and ``--debug`` shows tracebacks:
each script passes its parsed flags to :func:`set_messages`, which keeps them
in the environment so that the worker processes it spawns inherit them. Progress bars draw in place on a
terminal; when stderr is a file or pipe they print one plain line at most
every :data:`LOG_INTERVAL` seconds instead, with no carriage return or cursor
code to garble the log.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

QUIET_VARIABLE = "TISSUE_AL_QUIET"
DEBUG_VARIABLE = "TISSUE_AL_DEBUG"
#: Seconds between progress lines in a log file.
LOG_INTERVAL = 30.0


def first_few(names: Sequence[str], shown: int = 5) -> str:
    """``names`` for a one-line message: the first ``shown``, then "..." if there are more."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def set_messages(quiet: bool, debug: bool) -> None:
    """What ``--quiet`` and ``--debug`` ask for, for this process and the workers it starts."""
    for variable, on in ((QUIET_VARIABLE, quiet), (DEBUG_VARIABLE, debug)):
        if on:
            os.environ[variable] = "1"
        else:
            os.environ.pop(variable, None)


def quiet() -> bool:
    return os.environ.get(QUIET_VARIABLE) == "1"


def debugging() -> bool:
    """Whether ``--debug`` was given: tracebacks instead of one-line errors."""
    return os.environ.get(DEBUG_VARIABLE) == "1"


def info(message: str) -> None:
    """A result or note for the user (stdout), unless ``--quiet``."""
    if not quiet():
        print(message, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def note_on_stderr(message: str) -> None:
    """A line on stderr while progress bars may be drawn (above them, on a terminal)."""
    if sys.stderr.isatty():
        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def progress(**kwargs: Any) -> Any:
    """A tqdm bar on a terminal, plain periodic lines in a log, nothing with ``--quiet``."""
    if quiet():
        return tqdm(disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(**kwargs)
    return LineProgress(**kwargs)


class LineProgress:
    """The part of tqdm's interface the scripts use, printing lines such as
    ``slides: 3/10 (30%), 0.2 slide/s, 00:15 elapsed``."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", leave: bool = True,
                 **_: Any) -> None:
        self.total, self.desc, self.unit, self.leave = total, desc, unit, leave
        self.n = 0
        self.started = self.last = time.monotonic()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= LOG_INTERVAL:
            self._print()

    def reset(self, total: int | None = None) -> None:
        self.n, self.total = 0, total if total is not None else self.total
        self.started = time.monotonic()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.leave:
            self._print()

    def _print(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.started
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 and self.n else ""
        minutes, seconds = divmod(int(elapsed), 60)
        print(f"{self.desc}: {done}{rate}, {minutes:02d}:{seconds:02d} elapsed", file=sys.stderr, flush=True)

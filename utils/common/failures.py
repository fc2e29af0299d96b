"""How failures reach the user: one line and an exit status.

Every failure a user can cause or fix (bad input, an unwritable or full disk,
Ctrl-C) ends in one ``error:`` line and a non-zero exit; ``--debug`` shows the
traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import warnings
from collections.abc import Callable
from typing import Any

from utils.common.errors import InputError
from utils.common.log import debugging, error


def exit_on_input_error(main: Callable[..., int]) -> Callable[..., int]:
    """Turn bad input, disk trouble and Ctrl-C into one ``error:`` line: exit
    status 2 for input, 3 for the disk, 130 for an interruption. With
    ``--debug`` (which ``main`` passes to :func:`utils.common.log.set_messages` once
    it has parsed its flags) the exception keeps its traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        warnings.formatwarning = _one_line_warning
        try:
            return main(argv)
        except InputError as exc:
            if debugging():
                raise
            error(str(exc))
            return 2
        except OSError as exc:
            if debugging():
                raise
            error(describe_os_error(exc))
            return 3
        except KeyboardInterrupt:
            if debugging():
                raise
            error("interrupted; finished work is kept, rerun the same command to go on")
            return 130

    return wrapper


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


def describe_os_error(exc: OSError) -> str:
    """One line naming the file and what to do about the failure."""
    where = f"{exc.filename}: " if exc.filename else ""
    hints = {
        errno.ENOSPC: "the disk is full; free space or choose another --output, then rerun (finished work is kept)",
        errno.EDQUOT: "the disk quota is exhausted; free space, then rerun (finished work is kept)",
        errno.EACCES: "permission denied; choose a folder you can write to",
        errno.EROFS: "the file system is read-only; choose another --output",
        errno.ENOTDIR: "a path component is a file, not a folder",
    }
    return f"{where}{exc.strerror or exc}" + (f" ({hints[exc.errno]})" if exc.errno in hints else "")

"""The experiments' training runs, each in a fresh process that starts warm.

An experiment runs the project's scripts dozens of times, each in its own
process so that no run inherits another's state (Keras's seeds and names,
TensorFlow's graphs and devices). A new interpreter spends seconds of CPU
importing TensorFlow before it reads a record. Here every run is forked from
one server process that imported TensorFlow once (``multiprocessing``'s
forkserver, preloaded with :mod:`experiments.launch_server`): the child
starts with the modules loaded, and TensorFlow's runtime, which the server
never started, starts in the child as it would in a new interpreter. The
script runs as ``python SCRIPT ARGV`` would (``__name__ == "__main__"``,
``sys.argv``, the caller's working folder and environment), its output in the
log file; its exit status is returned (1 with the traceback in the log for
an uncaught exception, as Python's own).
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["experiments.launch_server"])


def run(script: Path, argv: list[str], log: Path) -> int:
    """``python script *argv`` with stdout and stderr in ``log``; its exit status."""
    process = _CONTEXT.Process(target=_main, args=(str(script), list(argv), str(log), os.getcwd(),
                                                   dict(os.environ)))
    process.start()
    process.join()
    return 1 if process.exitcode is None else process.exitcode


def _main(script: str, argv: list[str], log: str, folder: str, environment: dict[str, str]) -> None:
    """The child: the caller's folder and environment, output to ``log``,
    then the script as ``__main__`` (multiprocessing turns a SystemExit or
    an exception into the exit status as the interpreter would)."""
    os.chdir(folder)
    os.environ.clear()
    os.environ.update(environment)
    with open(log, "w") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    sys.argv = [script, *argv]
    sys.path.insert(0, str(Path(script).parent))
    runpy.run_path(script, run_name="__main__")

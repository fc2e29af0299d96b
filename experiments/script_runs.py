"""The project's scripts, run for an experiment in worker processes that
import TensorFlow once.

An experiment starts dozens of short runs of ``tfrecord_generator.py`` and
``active_learning_train.py``. A fresh Python process per run spends about 5
CPU-seconds importing TensorFlow and Keras before it computes anything: half
of a head-mode run of the smoke-sized experiments. Here each run is a call of
the script's ``main(argv)`` in a worker process of a pool that lives as long
as the experiment, one run at a time per worker, with what a fresh process
would have:

* its output: ``sys.stdout``, ``sys.stderr`` and file descriptors 1 and 2
  go to the run's log for the call, so TensorFlow's own messages and the
  progress lines land there too;
* its environment and ``sys.argv``: the experiment's environment as it is
  when the run is started (``--quiet`` and ``--debug`` are kept there,
  :mod:`utils.common.log`), restored afterwards;
* its state: each run seeds itself (:func:`utils.learning.training.run_training`),
  the process-wide settings of :mod:`utils.common.setup` are the same for every run,
  and Keras' session is cleared after each run so models do not pile up.

A worker that dies (killed, out of memory) stops the experiment with the log to
read; finished runs stay finished and a rerun of the command resumes the rest.
"""

from __future__ import annotations

import functools
import gc
import importlib
import multiprocessing
import os
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def workers() -> ProcessPoolExecutor:
    """The experiment's worker processes, started as runs need them: at most
    one per core, and no more than the runs in flight at once (``--jobs``)."""
    return ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("spawn"))


def run_script(script: str, argv: list[str], log: Path) -> None:
    """``python script argv`` with its output in ``log``; a failure stops the
    experiment with the log to read."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        code = workers().submit(run_main, script, argv, str(log), dict(os.environ)).result()
    except BrokenProcessPool:
        sys.exit(f"error: the process running {script} died (killed, or out of memory?); see {log}")
    if code != 0:
        sys.exit(f"error: {script} failed (exit {code}); see {log}")


def run_main(script: str, argv: list[str], log: str, environment: dict[str, str]) -> int:
    """In a worker: ``script``'s ``main(argv)`` as its command line would run
    it, and its exit status."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    main = importlib.import_module(Path(script).stem).main
    saved_environment, saved_argv, saved_streams = dict(os.environ), sys.argv, (sys.stdout, sys.stderr)
    os.environ.clear()
    os.environ.update(environment)
    sys.argv = [str(ROOT / script), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "w", encoding="utf-8", buffering=1) as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            sys.stdout = sys.stderr = handle
            try:
                return exit_status(main, argv)
            finally:
                handle.flush()
    finally:
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        os.environ.clear()
        os.environ.update(saved_environment)
        sys.argv = saved_argv
        forget_models()


def exit_status(main: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """What ``python script argv`` would exit with: ``main``'s return value,
    ``sys.exit``'s code (a message printed to stderr, as Python does), or 1
    with the traceback for an exception."""
    try:
        return main(argv) or 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1


def forget_models() -> None:
    """Drop what the run built in Keras' session, so a worker's memory does not
    grow run after run."""
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()
    gc.collect()

"""Run ``active_learning_train.py`` in a process whose CPU is split into two
logical devices, so that ``--devices CPU:0,CPU:1`` takes the code path of two
GPUs: a MirroredStrategy of two replicas, mirrored variables, split batches
and all-reduced gradients.

    python tests/two_replicas.py RUNS.json

RUNS.json is a list of runs, each ``{"argv": [...], "interrupt_fit": K}``,
carried out in order; with ``interrupt_fit`` the K-th fit of that run (1 is
round 0's) stops with KeyboardInterrupt, as Ctrl-C would (exit status 130),
and the next run goes on. Each run's exit status is printed as
``run <i>: <status>``.

oneDNN's graph rewrites are turned off: they are CPU-only (a GPU run never
sees them) and they mis-wire convolutions across logical CPU devices.
"""

from __future__ import annotations

import os
import sys

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import active_learning_train  # noqa: E402
from utils.learning import learners  # noqa: E402


def interrupting(fit, at: int):
    """``fit`` that raises KeyboardInterrupt on its ``at``-th call."""
    calls = [0]

    def wrapped(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            raise KeyboardInterrupt
        return fit(self, *args, **kwargs)

    return wrapped


def main() -> None:
    runs = json.loads(open(sys.argv[1], encoding="utf-8").read())
    for i, run in enumerate(runs):
        fits = {kind: kind.fit for kind in (learners.FullNetwork, learners.HeadOnFeatures)}
        if run.get("interrupt_fit"):
            for kind, fit in fits.items():
                kind.fit = interrupting(fit, run["interrupt_fit"])
        try:
            status = active_learning_train.main(run["argv"])
        finally:
            for kind, fit in fits.items():
                kind.fit = fit
        print(f"run {i}: {status}", flush=True)


if __name__ == "__main__":
    main()

"""The devices a training run fits on, and the ``tf.distribute`` distribution over them.

``--devices`` is ``all`` (every visible GPU), a count (the first N GPUs) or
device names (``GPU:0,GPU:2``). Two or more devices make a
``MirroredStrategy``: every replica holds a copy of the weights, takes its
share of each global batch (``--batch-size`` is the global batch) and the
gradients are summed across replicas before every update, so one step on N
replicas is one step of the same global batch on one device, up to the order
of floating-point sums and each replica's own dropout masks.

Everything with state that a step touches (the model, each round's optimizer,
the metrics) must be made inside :meth:`tf.distribute.Strategy.scope`; the
learners (:mod:`utils.learning.learners`) do that. Prediction (pool scoring,
evaluation) runs on the first device.

Device names may also be CPUs (``CPU:0,CPU:1``), which is how the tests run
the several-GPU path on a machine without one: they split the CPU into
logical devices first.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from utils.common.errors import InputError

#: ``--devices`` default: every visible GPU.
ALL = "all"


@functools.cache
def distribution_over(devices: str) -> tf.distribute.Strategy:
    """The distribution for ``--devices``: the default (one device, TensorFlow's
    placement) without GPUs or with one, a ``OneDeviceStrategy`` for one named
    device, a ``MirroredStrategy`` over two or more.

    One per process and device set: the all-reduces of two MirroredStrategy
    objects in one process draw their collective keys from the same counter
    and abort on each other's shapes (``--repeats``, or a test's runs)."""
    names = chosen_devices(devices)
    if not names:
        return tf.distribute.get_strategy()
    if len(names) == 1:
        return tf.distribute.OneDeviceStrategy(names[0])
    return tf.distribute.MirroredStrategy(names)


def chosen_devices(devices: str) -> list[str]:
    """The full names of the devices ``--devices`` asks for; empty for
    TensorFlow's own placement (``all`` on a machine with at most one GPU)."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    text = devices.strip()
    if text.lower() == ALL:
        return gpus if len(gpus) > 1 else []
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= len(gpus):
            raise InputError(f"--devices {count}: {len(gpus)} GPU(s) visible ({', '.join(gpus) or 'none'}); "
                             f"pass a count from 1 to {len(gpus)}, or 'all'" if gpus else
                             f"--devices {count}: no GPU is visible; leave --devices out to train on the CPU")
        return gpus[:count]
    visible = {_short(d.name): d.name for d in tf.config.list_logical_devices()}
    names = []
    for part in text.split(","):
        key = _short(part)
        if key not in visible:
            raise InputError(f"--devices: no device {part.strip()!r}; visible: {', '.join(sorted(visible))}")
        if visible[key] in names:
            raise InputError(f"--devices names {part.strip()!r} twice")
        names.append(visible[key])
    return names


def describe(distribution: tf.distribute.Strategy, batch_size: int) -> str:
    """One line for the log: the distribution, its devices and each replica's share of the batch."""
    replicas = distribution.num_replicas_in_sync
    devices = ", ".join(device_names(distribution)) or "TensorFlow's default placement"
    if replicas == 1:
        return f"training on one device ({devices})"
    share = f"{batch_size / replicas:g}"
    return (f"training on {replicas} replicas ({type(distribution).__name__} over {devices}): --batch-size "
            f"{batch_size} is the global batch, {share} tiles per replica per step")


def device_names(distribution: tf.distribute.Strategy) -> list[str]:
    """The devices a distribution runs on; empty for the default distribution."""
    try:
        return [_short(name) for name in distribution.extended.worker_devices]
    except RuntimeError:  # the default distribution keeps no device list
        return []


def _short(name: str) -> str:
    """``/job:localhost/replica:0/task:0/device:GPU:0``, ``/gpu:0`` and ``GPU:0`` alike as ``GPU:0``."""
    tail = name.strip().split("/")[-1]
    kind, _, number = tail.removeprefix("device:").rpartition(":")
    return f"{kind.upper()}:{number}"

"""Shared building blocks of the three scripts: configuration, slide access,
tile geometry, tissue masks, annotations, records, model, active learning and
inference. Scripts stay thin and call into here, so that extraction and
inference cut tiles with exactly the same code."""

import os

__version__ = "0.1.0"

# TensorFlow's C++ chatter (CPU features, oneDNN notes) buries the progress
# bars users read: keep its warnings and errors only, unless set otherwise,
# and filter the notes it prints while loading whatever that setting says.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from utils.startup import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

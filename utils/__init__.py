"""Shared building blocks of the three scripts, in one sub-package per stage
of the pipeline, each importing only from those before it: ``common``
(configuration, errors, messages, files), ``slides`` (reading slides and
annotations), ``tiles`` (records of tile triplets), ``network`` (the model),
``learning`` (the active-learning rounds) and ``maps`` (inference). Scripts
stay thin and call into here, so that extraction and inference cut tiles with
exactly the same code."""

import os

__version__ = "0.1.0"

# TensorFlow's C++ chatter (CPU features, oneDNN notes) buries the progress
# bars users read: keep its warnings and errors only, unless set otherwise.
# TensorFlow itself is not imported here: the scripts load it after reading
# their arguments (utils.common.setup.setup_process), so that --help answers at once.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

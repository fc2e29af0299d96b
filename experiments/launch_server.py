"""Imported once by the server that :mod:`experiments.launch` forks every
run from: importing it loads TensorFlow (its start-up notes filtered, after
``utils`` sets its log level), so that no run pays for that import again."""

import utils  # noqa: F401
from utils.startup import import_tensorflow_quietly

import_tensorflow_quietly()

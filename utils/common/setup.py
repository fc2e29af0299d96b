"""Process-wide settings, made in one call at the start of each script's
``main`` (and of the test session) rather than as side effects of importing a
module.

One setting cannot wait for ``main``: TensorFlow reads
``TF_CPP_MIN_LOG_LEVEL`` once, when it is first imported; ``utils/__init__.py``
therefore sets its default. The scripts import only light modules at the top
and call :func:`setup_process` once their arguments are read: it loads
TensorFlow (its start-up notes filtered), and the modules that need it are
imported after it.
"""

from __future__ import annotations

import functools
import logging
import warnings

from utils.common.startup import import_tensorflow_quietly


@functools.cache
def setup_process() -> None:
    """Quiet libraries that speak for errors reported here anyway, choose
    deterministic kernels, and compute in mixed precision on a GPU.

    * tifffile logs damaged-file details itself, at ERROR level too (e.g.
      "invalid page offset" of a truncated file); the SlideError raised by
      :mod:`utils.slides.slide` says it in one line, so only its critical messages show.
    * Keras warns about finite datasets and ``shuffle=True`` that training
      hands it by design.
    * Seeds alone leave multithreaded kernels free to sum in any order, which
      a small labelled set amplifies into different models (and a 0.6 or 0.9
      threshold into different map cells); deterministic kernels make the
      same command give the same numbers. Each run seeds itself.
    * Mixed precision halves the memory of activations on a GPU; the model's
      output layer and the head's first layer stay in float32
      (:func:`utils.network.model.build_model`).
    """
    import_tensorflow_quietly()
    import keras
    import tensorflow as tf

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    warnings.filterwarnings("ignore", message=".*Your input ran out of data.*")
    tf.config.experimental.enable_op_determinism()
    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")

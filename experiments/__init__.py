"""The experiments on real tissue (docs/experiment.md). TensorFlow is loaded
here, with its start-up notes filtered as the scripts filter them, because the
experiments' own modules import it before any script's ``main`` runs."""

from utils.common.startup import import_tensorflow_quietly

import_tensorflow_quietly()

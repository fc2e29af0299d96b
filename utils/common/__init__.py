"""What every stage shares: the configuration a user edits for a new dataset
(``config``) and the scales it implies (``scales``), the error family and how
a failure reaches the user (``errors``, ``failures``), messages and progress
(``log``), atomic file writes (``io``), the command-line pieces and option
declarations of the three scripts (``cli``, ``options``), the process-wide
settings and TensorFlow's quiet first import (``setup``, ``startup``), and the
figures (``plots``). It imports nothing else from ``utils``."""

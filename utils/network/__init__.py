"""The multiscale network: its description without building it
(``model_spec``), how it is built, saved and loaded (``model``), the texture
backbone (``texture``), the batch-norm statistics of a new lab
(``batch_norm``), the devices it fits on (``devices``) and the SimCLR model
that pretrains a backbone (``simclr``). It may import ``utils.common``,
``utils.slides`` and ``utils.tiles``."""

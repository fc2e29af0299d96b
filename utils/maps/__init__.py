"""Whole-slide inference: every tissue tile of the extraction grid predicted
and stitched into maps a pathologist opens (``inference``), and its settings
(``inference_options``). It may import ``utils.common``, ``utils.slides``,
``utils.tiles`` and ``utils.network``, never the training code."""

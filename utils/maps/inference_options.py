"""The settings of an inference run (``active_learning_inference.py``),
apart from inference itself so that the script reads its flags, and answers
``--help``, before TensorFlow loads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from utils.common.errors import ConfigError
from utils.common.options import option
from utils.slides.slide import MppOverride

#: How overlay.png shows the classes.
OVERLAY_STYLES = ("fill", "outline")


@dataclass(frozen=True)
class InferenceOptions:
    """Settings of an inference run. The fields declared with
    :func:`~utils.common.options.option` are also flags of
    ``active_learning_inference.py`` and keys of a configuration file's
    ``inference:`` section."""

    output: Path
    model_path: Path
    model_sha256: str = ""
    mpp: MppOverride = MppOverride()
    overwrite: bool = False
    workers: int = option(min(8, os.cpu_count() or 1),
                          "threads reading and decoding slide blocks (default: cores, at most 8)", "slides")
    batch_size: int = option(512, "tiles per model call", "inference")
    smooth: bool = option(
        False, "3x3 majority smoothing of the map (also erodes structures one cell wide)", "inference")
    overlay: str = option(
        "fill", "overlay.png: 'fill' blends the class colours into the slide at 40%; 'outline' draws the class "
                "boundaries on the unaltered slide", "inference", choices=OVERLAY_STYLES)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, not {self.workers}")
        if self.overlay not in OVERLAY_STYLES:
            raise ConfigError(f"overlay must be one of {', '.join(OVERLAY_STYLES)}, not {self.overlay!r}")

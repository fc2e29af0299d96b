"""The settings of an extraction run (``tfrecord_generator.py``), apart from
the extraction itself so that the script reads its flags, and answers
``--help``, before TensorFlow loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.common.errors import ConfigError
from utils.common.options import option
from utils.slides.slide import MppOverride

#: How tiles are stored in the records.
ENCODINGS = ("png", "jpeg")


@dataclass(frozen=True)
class ExtractOptions:
    """Settings of an extraction run, from slides or from tile folders. The
    fields declared with :func:`~utils.common.options.option` are also flags of
    ``tfrecord_generator.py`` and keys of a configuration file's
    ``extraction:`` section."""

    output: Path
    annotations: Path | None = None
    mpp: MppOverride = MppOverride()
    overwrite: bool = False
    encoding: str = option("png", "tile encoding: png is lossless; jpeg (quality 90) is about 3x faster to write and 5x smaller",
                           "extraction", choices=ENCODINGS)
    unlabeled: bool = option(False, "also write every unlabelled tissue tile (label -1), the active-learning pool; "
                                    "slides without annotation file are then pooled whole", "extraction")
    strict: bool = option(False, "fail a slide whose annotation names match no rule (with --tiles: stop on a class "
                                 "folder that matches no rule)", "extraction")
    slide_pattern: str = option(
        r"^(.+?)[._]", "with --tiles: regular expression whose first group, searched in a file name, is the tile's "
                       "slide (default: the name up to the first '.' or '_')", "extraction")
    workers: int = option(1, "slides processed in parallel", "slides")

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"encoding must be one of {', '.join(ENCODINGS)}, not {self.encoding!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, not {self.workers}")

"""The scales of a tile triplet, as one value.

A record holds one tile per scale; a model has one input per scale, named
after its magnification; extraction cuts each scale's window at its µm/px.
All of these follow from two settings, the magnifications (highest first,
scale 0) and the tile size, so they are computed here once:
:attr:`utils.common.config.Config.scales` makes the value, and extraction, the
record reader, the model, the batch-norm adaptation and inference take it.

What the data means, its *fingerprint*, is the scales and the class list:
records of two fingerprints cannot train together and a model fits only data
of its own. :func:`check_same_data` is the one check of it, at each place two
sources meet (a data folder and this run, a shard and this run, a source model
and this run), with that place's words for what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: µm/px of a "1x" objective; 40x is then 0.25 µm/px, the usual scanner convention.
MICRONS_PER_PIXEL_AT_1X = 10.0
#: What a fingerprint holds, in the order a difference is reported.
FINGERPRINT_KEYS = ("classes", "magnifications", "tile_size")


def scale_name(magnification: float) -> str:
    """Name of a scale as used for model inputs: 40 -> 'mag_40x', 2.5 -> 'mag_2_5x'."""
    return "mag_" + f"{magnification:g}".replace(".", "_") + "x"


@dataclass(frozen=True)
class Scales:
    """The magnifications of a triplet, highest first, and the side of every tile in pixels."""

    magnifications: tuple[float, ...]
    tile_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "magnifications", tuple(float(m) for m in self.magnifications))
        object.__setattr__(self, "tile_size", int(self.tile_size))

    def __len__(self) -> int:
        return len(self.magnifications)

    @property
    def names(self) -> list[str]:
        """The model's input names, one per scale (:func:`scale_name`)."""
        return [scale_name(m) for m in self.magnifications]

    @property
    def mpps(self) -> list[float]:
        """Target µm/px of each scale."""
        return [MICRONS_PER_PIXEL_AT_1X / m for m in self.magnifications]

    def __str__(self) -> str:
        return f"{self.tile_size}-px tiles at {'/'.join(f'{m:g}x' for m in self.magnifications)}"


def check_same_data(theirs: dict[str, Any], ours: dict[str, Any], error: type[Exception], what: str,
                    fix: str) -> None:
    """Stop, with one line, where ``what`` (a data folder, a shard, a source
    model) has another fingerprint than this run, naming the first key that
    differs: "``what`` <key> <theirs>, this run has <ours>; ``fix``"."""
    for key in FINGERPRINT_KEYS:
        if theirs.get(key) != ours.get(key):
            raise error(f"{what} {key} {theirs.get(key)}, this run has {ours.get(key)}; {fix}")

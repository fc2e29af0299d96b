"""How far ``--stain-jitter`` moves a triplet's stains and colours: the
presets, light to import (the options name them before TensorFlow loads);
:mod:`utils.tiles.augment` applies them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StainJitter:
    """How far a triplet's stains and colours may move."""

    sigma: float  # HED scale in [1 - σ, 1 + σ], shift in [-σ, σ]
    brightness: float  # added to every channel, as a fraction of full scale, in [-b, b]
    contrast: float  # contrast factor in [1 - c, 1 + c] about the image mean
    saturation: float  # saturation factor in [1 - s, 1 + s]


#: ``--stain-jitter`` presets: Tellez et al.'s HED-light and HED-strong stain
#: ranges; the brightness, contrast and saturation ranges are this project's,
#: small beside the stain change and four times wider in the strong preset.
STAIN_PRESETS = {
    "light": StainJitter(sigma=0.05, brightness=0.025, contrast=0.05, saturation=0.05),
    "strong": StainJitter(sigma=0.2, brightness=0.1, contrast=0.2, saturation=0.2),
}


def stain_jitter_of(preset: str, sigma: float | None = None) -> StainJitter | None:
    """The preset (``none``, ``light``, ``strong``), with its HED σ replaced by ``sigma`` when given."""
    if preset == "none":
        return None
    jitter = STAIN_PRESETS[preset]
    return jitter if sigma is None else StainJitter(sigma, jitter.brightness, jitter.contrast, jitter.saturation)

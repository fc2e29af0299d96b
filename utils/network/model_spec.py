"""What a model is, without building it: the architecture's description
(:class:`ModelSpec`) and what a saved model says about itself (the
``tissue_al.json`` member of its ``.keras`` archive). Nothing here imports
Keras, so the scripts read their options, check a source model against the
flags and answer ``--help`` before TensorFlow loads."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.common.config import Config, fingerprint
from utils.common.errors import ModelError
from utils.common.scales import check_same_data

#: ``texture`` is QuPath's filter bank (utils/network/texture.py), learned from
#: nothing; ``texture+small`` concatenates the small CNN's features with it.
BACKBONES = ("vgg16", "mobilenetv2", "small", "texture", "texture+small")
METADATA_MEMBER = "tissue_al.json"
PREPROCESSING = {"vgg16": "caffe", "mobilenetv2": "tf", "small": "unit", "texture": "unit", "texture+small": "unit"}
#: Input scalings: a backbone's own, or ``raw`` 0-255 as the original code fed VGG16.
INPUT_SCALINGS = ("caffe", "tf", "unit", "raw")

@dataclass(frozen=True)
class ModelSpec:
    backbone: str = "vgg16"
    head_units: int = 4096
    dropout: float = 0.4
    #: None: the backbone's own (caffe for VGG16, tf for MobileNetV2, unit for small and texture).
    input_scaling: str | None = None

    @property
    def scaling(self) -> str:
        return self.input_scaling or PREPROCESSING[self.backbone]


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The configuration and backbone saved with a model by :func:`save_model`."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(METADATA_MEMBER))
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: not a model saved by this project ({exc})") from None


def source_metadata(path: str | Path | None) -> dict[str, Any] | None:
    """What a ``--weights`` model saved by this project says about itself
    (configuration and architecture); None for weight files and other models."""
    if path is None or Path(path).suffix != ".keras" or not Path(path).is_file():
        return None
    try:
        return read_metadata(path)
    except ModelError:
        return None


def source_spec(source: dict[str, Any] | None, backbone: str | None, head_units: int | None,
                input_scaling: str | None = None) -> ModelSpec:
    """The architecture to fine-tune: flags where given, else the source model's, else the defaults."""
    saved = ModelSpec(**source["spec"]) if source and source.get("spec") else ModelSpec()
    return ModelSpec(backbone or saved.backbone, head_units or saved.head_units, saved.dropout,
                     input_scaling or saved.input_scaling)


def check_fits_source(path: str | Path, source: dict[str, Any], spec: ModelSpec, config: Config) -> None:
    """A model fine-tuned from ``path`` must be the same network on data of the
    same meaning; anything else would silently lose the source's weights."""
    saved = dict(source.get("spec") or {})
    if "backbone" in saved:  # what the source model was fed, also when saved before the switch existed
        saved["scaling"] = saved.get("input_scaling") or PREPROCESSING.get(saved["backbone"])
    for key, flag in (("backbone", "--backbone"), ("head_units", "--head-units"), ("scaling", "--input-scaling")):
        if key in saved and saved[key] != getattr(spec, key):
            raise ModelError(f"{path} has {key} {saved[key]!r} but {flag} asks for {getattr(spec, key)!r}; leave "
                             f"{flag} out to fine-tune the source model, or pass --allow-partial-weights to load "
                             f"its layers by name into another architecture")
    if "config" in source:
        check_same_data(fingerprint(source["config"]), config.fingerprint(), ModelError, f"{path} was trained with",
                        "this run's comes from the data's extraction_config.json, --config or the flags: fine-tune "
                        "on data extracted with the model's classes and scales, or pass --allow-partial-weights")

"""The constants a user edits for a new dataset, in one place.

Defaults reproduce Fuster et al. (EUSIPCO 2023): six bladder tissue classes, the
annotation-name rules of the original database, tile triplets of 128 px at
40x/10x/2.5x and the inference thresholds. A JSON or YAML file passed with
``--config`` overrides any subset of the keys, command-line flags override
both, and every run writes the resolved configuration next to its outputs
(:func:`save_config`) so that a result can always be traced back to its
settings. The same file may hold a ``training:`` and an ``inference:``
section with those scripts' options (:mod:`utils.common.options`), so that one file
describes a whole experiment (``presets/original.yaml``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.common.errors import ConfigError
from utils.common.io import atomic_write_text
from utils.common.scales import Scales

#: QuPath's built-in class for objects to leave out: a query square set to it stays unlabelled.
QUPATH_IGNORE = r"ignore\*"
#: The name of a query square as written (``round 2 #7 (stroma?)``): read back
#: without a class, the square was not reviewed, and it stays unlabelled.
QUERY_SQUARE = r"round \d+ #\d+( \(.*\?\))?"


def query_square_name(round_number: int, number: int, predicted: str | None) -> str:
    """The name a query square is written with, which :data:`QUERY_SQUARE` reads back."""
    return f"round {round_number} #{number}" + (f" ({predicted}?)" if predicted else "")


#: The project's folder, and the presets shipped in it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PRESETS = PROJECT_ROOT / "presets"


def _default_classes() -> list[dict[str, Any]]:
    return [
        {"name": "background", "color": "#000000"},
        {"name": "blood", "color": "#800000"},
        {"name": "damaged", "color": "#0000FF"},
        {"name": "muscle", "color": "#00C000"},
        {"name": "stroma", "color": "#FF00FF"},
        {"name": "urothelium", "color": "#FFA500"},
    ]


def _default_rules() -> list[list[str]]:
    # [regular expression matched case-insensitively against the whole
    #  annotation name, class name]. First matching rule wins.
    return [
        [r"background|glass", "background"],
        [r"blood.*", "blood"],
        [r"(cauteri[sz]ed|blurr?y|blurred|folding|folded|others?)\b.*", "damaged"],
        [r"muscle.*", "muscle"],
        [r"lamina( propria)?.*|stroma.*", "stroma"],
        [r"(grade|cis\b|dysplasia|uro|variant|flat).*|.*urothelium.*", "urothelium"],
    ]


def _default_ignore() -> list[str]:
    # The original code skipped QuPath/ASAP placeholder names and duplicates.
    return [r".*\b(untitled|copy)\b.*"]


def _default_exclude() -> list[str]:
    # The original code removed "Cancerous invasive area" from every other class.
    return [r"cancerous invasive area"]


@dataclass(frozen=True)
class Config:
    """Resolved settings of one run. Class indices are list positions."""

    classes: list[dict[str, Any]] = field(default_factory=_default_classes)
    undefined: dict[str, Any] = field(
        default_factory=lambda: {"name": "undefined", "color": "#808080"}
    )
    rules: list[list[str]] = field(default_factory=_default_rules)
    #: Annotation names (regular expressions, whole name, any case) that carry
    #: no label and are not reported as unmatched. Checked before ``rules``.
    ignore: list[str] = field(default_factory=_default_ignore)
    #: Annotation names whose regions take the label away from every class
    #: beneath them: their cells stay unlabelled. Checked before ``rules``.
    exclude: list[str] = field(default_factory=_default_exclude)
    #: Where regions of different classes overlap, classes listed first win;
    #: unlisted classes follow in class order. The paper lets blood and muscle win.
    priority: list[str] = field(default_factory=lambda: ["blood", "muscle"])
    #: The class of glass: cells off the tissue mask take it in the maps, and
    #: regions drawn with it label tiles although they are not tissue. None,
    #: or a name the classes do not list, means that glass is not a class.
    background_class: str | None = "background"
    #: Training: classes exempt from the per-slide cap (the paper's rare blood).
    uncapped_classes: list[str] = field(default_factory=lambda: ["blood"])
    #: Objective magnifications of the scales, highest first (scale 0).
    magnifications: list[float] = field(default_factory=lambda: [40.0, 10.0, 2.5])
    tile_size: int = 128
    #: A tile takes a class when that class covers this fraction of its
    #: highest-magnification window (after removing background).
    region_fraction: float = 0.7
    #: A tile is a tissue tile (pool, inference) when tissue covers this fraction.
    tissue_fraction: float = 0.5
    #: "otsu": Otsu threshold on saturation, robust to grey or tinted glass;
    #: "green": the paper's rule, green channel > 250 is background, 4x4 closing.
    tissue_method: str = "otsu"
    #: Label and tissue masks are rasterised with this many cells per tile side.
    mask_cells_per_tile: int = 8
    #: Let a magnification exceed the scan's by resampling up (off: an error).
    allow_upsampling: bool = False
    #: Inference: a cell whose top probability is below this is "undefined".
    undefined_threshold: float = 0.6
    #: Inference: this class is kept only at or above ``damaged_threshold``,
    #: otherwise the next most likely class is taken.
    damaged_class: str = "damaged"
    damaged_threshold: float = 0.9

    def __post_init__(self) -> None:
        validate(self)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def scales(self) -> Scales:
        """The tile triplet's scales: magnifications, tile size and what follows from them."""
        return Scales(tuple(self.magnifications), self.tile_size)

    @property
    def background_index(self) -> int | None:
        """Index of ``background_class``, if the classes list it."""
        names = self.class_names
        return names.index(self.background_class) if self.background_class in names else None

    def class_index(self, name: str) -> int:
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ConfigError(f"unknown class {name!r}; classes are {self.class_names}") from None

    def class_for_annotation(self, annotation_name: str) -> int | None:
        """Class index for an annotation name, or None. A configured class name
        (in any case, so QuPath's built-in "Stroma" is "stroma") is that class,
        as the query squares and the maps write it; other names take the first
        matching rule."""
        name = annotation_name.strip().casefold()
        for index, class_name in enumerate(self.class_names):
            if class_name.casefold() == name:
                return index
        for pattern, class_name in self.rules:
            if _matches(pattern, annotation_name):
                return self.class_index(class_name)
        return None

    def annotation_role(self, annotation_name: str) -> str:
        """"ignore", "unreviewed", "exclude", "class" (a rule maps it) or
        "unmatched", in that order of precedence. QuPath's built-in ``Ignore*``
        class is always ignored; a query square whose name is all it has (no
        class was set) is unreviewed, whatever class its name mentions."""
        if any(_matches(p, annotation_name) for p in (QUPATH_IGNORE, *self.ignore)):
            return "ignore"
        if _matches(QUERY_SQUARE, annotation_name):
            return "unreviewed"
        if any(_matches(p, annotation_name) for p in self.exclude):
            return "exclude"
        return "class" if self.class_for_annotation(annotation_name) is not None else "unmatched"

    def paint_order(self) -> list[int]:
        """Class indices in the order they are painted: lowest priority first."""
        first = [self.class_index(n) for n in self.priority]
        rest = [i for i in range(self.num_classes) if i not in first]
        return list(reversed(first + rest))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.to_dict())

    def extraction_settings(self) -> dict[str, Any]:
        """Everything but what only inference reads: the settings a shard depends on."""
        return {k: v for k, v in self.to_dict().items() if k not in (*INFERENCE_ONLY, *TRAINING_ONLY)}

    def map_settings(self) -> dict[str, Any]:
        """Everything but what only training reads: the settings a map depends on."""
        return {k: v for k, v in self.to_dict().items() if k not in TRAINING_ONLY}


#: Configuration keys that shape maps but not shards.
INFERENCE_ONLY = ("undefined", "undefined_threshold", "damaged_class", "damaged_threshold")
#: Configuration keys that shape the training sets but not shards.
TRAINING_ONLY = ("uncapped_classes",)
#: Sections of a configuration file that hold a script's options rather than
#: configuration keys (see :mod:`utils.common.options`).
SECTIONS = ("extraction", "training", "inference")


def fingerprint(values: dict[str, Any]) -> dict[str, Any]:
    """What records cut with a configuration (a :class:`Config` as a dict) mean:
    class list, scales and tile size (checked by :func:`utils.common.scales.check_same_data`)."""
    default = Config()
    return {"classes": [c["name"] for c in values.get("classes", default.classes)],
            "magnifications": [float(m) for m in values.get("magnifications", default.magnifications)],
            "tile_size": int(values.get("tile_size", default.tile_size))}


def _matches(pattern: str, annotation_name: str) -> bool:
    return re.fullmatch(pattern, annotation_name.strip(), flags=re.IGNORECASE) is not None


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    if len(value) != 6:
        raise ConfigError(f"colour {color!r} is not of the form #RRGGBB")
    return tuple(int(value[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def validate(config: Config) -> None:
    names = config.class_names
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"class names must be unique and non-empty: {names}")
    for entry in [*config.classes, config.undefined]:
        if set(entry) != {"name", "color"}:
            raise ConfigError(f"class entry {entry} must have exactly 'name' and 'color'")
        hex_to_rgb(entry["color"])
    for rule in config.rules:
        if len(rule) != 2 or rule[1] not in names:
            raise ConfigError(f"rule {rule} must be [pattern, one of {names}]")
        try:
            re.compile(rule[0])
        except re.error as exc:
            raise ConfigError(f"rule pattern {rule[0]!r} is not a regular expression: {exc}") from None
    for pattern in [*config.ignore, *config.exclude]:
        if not isinstance(pattern, str):
            raise ConfigError(f"ignore and exclude hold regular expressions (strings), not {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"pattern {pattern!r} is not a regular expression: {exc}") from None
    for key in ("priority", "uncapped_classes"):
        for name in getattr(config, key):
            if name not in names:
                raise ConfigError(f"{key} names unknown class {name!r}; classes are {names}: set {key} in the "
                                  f"configuration file to names of its classes, or to []")
    mags = list(config.magnifications)
    if not 1 <= len(mags) <= 3 or any(m <= 0 for m in mags) or mags != sorted(mags, reverse=True):
        raise ConfigError(f"magnifications must be 1 to 3 positive values, highest first: {mags}")
    if config.tile_size < 8:
        raise ConfigError(f"tile_size must be at least 8, not {config.tile_size}")
    for key in ("region_fraction", "tissue_fraction", "undefined_threshold", "damaged_threshold"):
        if not 0.0 <= getattr(config, key) <= 1.0:
            raise ConfigError(f"{key} must lie in [0, 1], not {getattr(config, key)}")
    if config.tissue_method not in ("otsu", "green"):
        raise ConfigError(f"tissue_method must be 'otsu' or 'green', not {config.tissue_method!r}")
    if config.mask_cells_per_tile < 1:
        raise ConfigError("mask_cells_per_tile must be at least 1")


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Defaults, then the keys of a JSON/YAML file, then non-None ``overrides``.
    A configuration that lists its own classes but no ``uncapped_classes``
    exempts only those of the default exemptions that it has."""
    values = read_config_file(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(values, path or "flags")


def build_config(values: dict[str, Any], source: str | Path) -> Config:
    """The configuration of ``values`` over the defaults. A key set to None
    (``background_class: null``) keeps None: only a key that is absent takes
    its default."""
    values = dict(values)
    _check_keys(values, source)
    if "classes" in values and "uncapped_classes" not in values:
        # The paper's exemption (blood) holds for a class list of one's own only
        # where it has that class; a configuration saved by a version before
        # the key existed behaved the same.
        names = [c.get("name") for c in values["classes"] if isinstance(c, dict)]
        values["uncapped_classes"] = [n for n in Config().uncapped_classes if n in names]
    if "magnifications" in values:
        values["magnifications"] = [float(m) for m in values["magnifications"]]
    try:
        return Config(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def read_config_file(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """The configuration keys a JSON or YAML file sets (JSON is valid YAML), or
    with ``section`` ("extraction", "training", "inference") the options that section sets."""
    keys, sections = read_settings(path)
    return keys if section is None else sections[section]


def settings_path(name: str | Path) -> Path:
    """The settings file ``name`` names: a path, else a shipped preset by name
    (``original`` for ``presets/original.yaml``), else a path within the
    project (``presets/original.yaml`` or ``experiments/kather.yaml`` from any
    folder)."""
    path = Path(name)
    for candidate in (path, PRESETS / f"{name}.yaml", PROJECT_ROOT / path):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise ConfigError(f"{name}: no such settings file, and no shipped preset of that name (presets: {shipped})")


def read_settings(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A settings file read once (a path or a preset's name, :func:`settings_path`):
    its configuration keys, and the options of each section (empty for a
    section it does not have)."""
    path = settings_path(path)
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: configuration must be a mapping of keys to values")
    keys = {k: v for k, v in loaded.items() if k not in SECTIONS}
    _check_keys(keys, path)
    for name in SECTIONS:
        if not isinstance(loaded.get(name) or {}, dict):
            raise ConfigError(f"{path}: section {name} must be a mapping of option names to values")
    return keys, {name: dict(loaded.get(name) or {}) for name in SECTIONS}


def _check_keys(values: dict[str, Any], source: str | Path) -> None:
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown configuration keys {unknown}; known: {sorted(known)}, and the "
                          f"sections {list(SECTIONS)}")


def save_config(config: Config, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")

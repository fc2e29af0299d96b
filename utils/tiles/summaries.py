"""The summaries that one stage leaves for the next, one type each.

* :class:`ShardSummary`: ``<slide>.summary.json`` beside every TFRecord shard,
  written by extraction from slides (:mod:`utils.tiles.extract`) and from tile
  folders (:mod:`utils.tiles.tile_folders`), read by training (the tile grid of the
  block split, the configuration check) and by the next extraction.
* :class:`MapSummary`: ``OUTPUT/<slide>/summary.json`` of inference, read by
  the script's report and by a rerun.

Every writer and reader goes through ``to_json``/``from_json``, so a key is
named in one place. ``from_json`` also reads the shapes earlier versions
wrote (see each method), so their data folders and maps keep working.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from utils.common.config import fingerprint
from utils.common.io import atomic_write_json
from utils.common.scales import Scales

DONE = "done"


class SummaryFile:
    """Reading and writing a summary through its ``from_json``/``to_json`` (atomically)."""

    @classmethod
    def read(cls, path: Path) -> Any:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))  # type: ignore[attr-defined]

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())  # type: ignore[attr-defined]


@dataclass
class ShardSummary(SummaryFile):
    """One slide's shard: what it holds, where its tiles lie and what made it.
    A slide that was skipped or left unchanged has a ``status`` and its name only."""

    slide: str
    status: str
    tiles: int = 0
    tiles_per_class: dict[str, int] = field(default_factory=dict)
    magnifications: list[float] = field(default_factory=list)
    tile_size: int = 0
    base_mpp: float = 0.0
    #: µm/px of the tiles of each scale, highest magnification first.
    scale_mpps: list[float] = field(default_factory=list)
    #: Level-0 distance between neighbouring tile centres.
    stride_level0: float = 0.0
    #: Level-0 side of the coarsest scale's window.
    window_level0: float = 0.0
    #: Class list, scales and tile size (:meth:`utils.common.config.Config.fingerprint`);
    #: None for shards whose summary recorded neither it nor the configuration.
    fingerprint: dict[str, Any] | None = None
    made_with: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: How the slide was read and labelled (extraction from slides).
    slide_path: str | None = None
    annotations: str | None = None
    mpp_source: str | None = None
    reader: dict[str, str] | None = None
    scale_levels: list[int] | None = None
    grid_shape: list[int] | None = None
    #: The corner of the slide's bounds, the origin of QuPath's coordinates (0, 0 for most formats).
    bounds_level0: list[int] | None = None
    encoding: str | None = None
    unmatched_annotations: dict[str, int] | None = None
    ignored_annotations: dict[str, int] | None = None
    #: Query squares read back without a class (not reviewed, so not labels).
    unreviewed_queries: int | None = None
    #: Query squares set to an ignored class (``Ignore*``): their tiles leave the pool.
    ignored_queries: int | None = None
    coverage: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    #: Where the tiles came from (extraction from tile folders).
    source: str | None = None
    images: int | None = None

    @property
    def done(self) -> bool:
        return self.status == DONE

    @property
    def scales(self) -> Scales:
        """The scales the shard's tiles were cut at."""
        return Scales(tuple(self.magnifications), self.tile_size)

    def to_json(self) -> dict[str, Any]:
        """The summary as written: the fields that apply, without the Nones."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardSummary:
        """Also reads earlier shapes: ``scale_mpp`` for ``scale_mpps``; no
        ``window_level0`` (taken from the coarsest scale, else the stride); no
        ``fingerprint`` (taken from the saved configuration where there is one);
        keys this version does not know are left out."""
        values = {key: data[key] for key in {f.name for f in fields(cls)} if key in data}
        if "scale_mpps" not in values and "scale_mpp" in data:
            values["scale_mpps"] = data["scale_mpp"]
        if not values.get("window_level0") and data.get("status") == DONE:
            mpps, base = values.get("scale_mpps"), values.get("base_mpp")
            values["window_level0"] = (values["tile_size"] * mpps[-1] / base if mpps and base
                                       else float(values.get("stride_level0", 0.0)))
        if values.get("fingerprint") is None and values.get("config"):
            values["fingerprint"] = fingerprint(values["config"])
        return cls(**values)



@dataclass
class ClassArea:
    """One class of a map: its cells, their area and their share of the tissue."""

    cells: int
    mm2: float
    percent_of_tissue: float


@dataclass
class MapSummary(SummaryFile):
    """One slide's tissue map: areas per class and what made them. A slide
    that was left unchanged has a ``status`` and its name only."""

    slide: str
    status: str
    slide_path: str | None = None
    base_mpp: float | None = None
    mpp_source: str | None = None
    grid_shape: list[int] | None = None
    #: The corner of the slide's bounds, the origin of QuPath's coordinates (0, 0 for most formats).
    bounds_level0: list[int] | None = None
    cell_size_level0: float | None = None
    cell_area_mm2: float | None = None
    tissue_tiles: int = 0
    tissue_mm2: float = 0.0
    classes: dict[str, ClassArea] = field(default_factory=dict)
    model: str | None = None
    reader: dict[str, str] | None = None
    model_info: dict[str, Any] | None = None
    smoothing: bool | None = None
    config: dict[str, Any] | None = None
    seconds: float | None = None
    predict_seconds: float | None = None
    tiles_per_second: float | None = None
    made_with: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status == DONE

    def tissue_shares(self, background: str | None) -> list[tuple[str, float]]:
        """(class, % of tissue) of the classes present, largest first, glass left out."""
        shares = sorted(((area.percent_of_tissue, name) for name, area in self.classes.items() if name != background),
                        reverse=True)
        return [(name, percent) for percent, name in shares if percent > 0]

    def to_json(self) -> dict[str, Any]:
        """The summary as written (``tiles_per_second`` stays, as null, when no tile was predicted)."""
        data = asdict(self)
        return {key: value for key, value in data.items() if value is not None or key == "tiles_per_second"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MapSummary:
        """Keys this version does not know are left out."""
        values = {key: data[key] for key in {f.name for f in fields(cls)} if key in data}
        values["classes"] = {name: ClassArea(**area) for name, area in values.get("classes", {}).items()}
        return cls(**values)


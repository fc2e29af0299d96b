"""What a round asks the pathologist to label, in three forms that share one
numbering ``#n`` (1 = the first pick):

* ``queries.csv``: one row per queried tile;
* ``<slide>.geojson``: one locked square per tile that QuPath imports ready to
  correct: named ``round k #n``, classified with the model's predicted class
  (the configured name and colour, so an import never creates a second class
  that differs only in case), and carrying the strategy's score, its rank in
  the pool, the two likeliest classes' probabilities and the tile's centre as
  QuPath ``measurements``;
* ``contact_sheet_<page>.png``: the tiles at every magnification, numbered
  like the squares, a page per ``SHEET_CELLS`` tiles.

Read back after the pathologist's export, a square's class is its label
whether it was corrected or left as predicted (a confirmation); QuPath's
``Ignore*`` class or a deleted square leaves the tile unlabelled
(:meth:`utils.config.Config.annotation_role`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from utils import plots
from utils.io import atomic_write_csv
from utils.qupath import feature, square, write_feature_collection

if TYPE_CHECKING:
    from utils.training_data import TrainingData

#: Tiles per contact sheet page.
SHEET_CELLS = 24
#: The columns of queries.csv.
COLUMNS = ("number", "slide", "x", "y", "predicted", "probability", "second", "second_probability", "score_name",
           "score", "rank", "label")


@dataclass
class Selection:
    """What one query chose: pool records, with what annotators are shown
    (the scores as ``score_name`` reads them, their ranks in the pool, the
    predicted classes and probabilities), the size of the pool scored, and
    the strategy that chose them (the warm start's, early on)."""

    ids: np.ndarray
    scores: np.ndarray | None
    predicted: np.ndarray | None
    pool_size: int
    strategy: str = ""
    probs: np.ndarray | None = None  # (queries, classes)
    ranks: np.ndarray | None = None  # of each query's score among the pool, 1 = the strategy's favourite
    score_name: str = "score"


def score_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every score, 1 for the highest; ties keep pool order, NaN ranks last."""
    order = np.argsort(-np.where(np.isnan(scores), -np.inf, scores), kind="stable")
    ranks = np.empty(len(scores), np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def query_rows(run: "TrainingData", selection: Selection) -> list[dict[str, Any]]:
    """One dict per query, in pick order: number, place, prediction, the
    second likeliest class, the score under its name, its rank, and the known
    label (empty in real use)."""
    names, index = run.config.class_names, run.index
    rows = []
    for k, i in enumerate(selection.ids):
        row: dict[str, Any] = {**dict.fromkeys(COLUMNS, ""), "number": k + 1, "slide": str(index.slide[i]),
                               "x": index.x[i].item(), "y": index.y[i].item(), "probability": None,
                               "second_probability": None, "score": None, "rank": None,
                               "label": names[index.label[i]] if index.label[i] >= 0 else ""}
        if selection.probs is not None:
            first, second = np.argsort(-selection.probs[k], kind="stable")[:2]
            row.update(predicted=names[first], probability=round(float(selection.probs[k][first]), 6),
                       second=names[second], second_probability=round(float(selection.probs[k][second]), 6))
        if selection.scores is not None and np.isfinite(selection.scores[k]):
            row.update(score_name=selection.score_name, score=round(float(selection.scores[k]), 6))
            if selection.ranks is not None:
                row["rank"] = int(selection.ranks[k])
        rows.append(row)
    return rows


def query_feature(row: dict[str, Any], side: float, round_number: int, colours: dict[str, str]) -> dict[str, Any]:
    """The QuPath annotation of one query: a locked square of the tile's
    footprint, classified as predicted (unclassified when nothing was
    predicted), with numeric measurements only, as QuPath stores them."""
    measurements: dict[str, float] = {}
    if row["score"] is not None:
        measurements[row["score_name"]] = row["score"]
    if row["rank"] is not None:
        measurements["rank in pool"] = row["rank"]
    for name, probability in ((row["predicted"], row["probability"]), (row["second"], row["second_probability"])):
        if probability is not None:
            measurements[f"P({name})"] = probability
    measurements["centre x (px)"], measurements["centre y (px)"] = float(row["x"]), float(row["y"])
    properties = {"name": f"round {round_number} #{row['number']}", "isLocked": True, "measurements": measurements}
    if row["predicted"]:
        return feature(square(row["x"], row["y"], side), "Polygon", row["predicted"], colours[row["predicted"]],
                       **properties)
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square(row["x"], row["y"], side)},
            "properties": {"objectType": "annotation", **properties}}


def caption(row: dict[str, Any]) -> list[str]:
    """The lines under a tile of the contact sheet."""
    lines = [f"#{row['number']}  {row['slide']}", f"x {row['x']:.0f}, y {row['y']:.0f}"]
    if row["probability"] is not None:
        lines.append(f"{row['predicted']} {row['probability']:.2f}, "
                     f"then {row['second']} {row['second_probability']:.2f}")
    elif row["label"]:
        lines.append(f"label: {row['label']}")
    if row["score"] is not None:
        lines.append(f"{row['score_name']} {row['score']:.3g}" + (f", rank {row['rank']}" if row["rank"] else ""))
    return lines


def write_queries(run: "TrainingData", selection: Selection, round_number: int) -> None:
    """``queries/round_<k>/``: queries.csv, one QuPath GeoJSON per slide and,
    unless ``--no-figures``, the contact sheet pages."""
    folder = run.out / "queries" / f"round_{round_number}"
    rows = query_rows(run, selection)
    atomic_write_csv(folder / "queries.csv", list(COLUMNS), [[r[key] for key in COLUMNS] for r in rows])
    colours = {c["name"]: c["color"] for c in run.config.classes}
    for slide in sorted({r["slide"] for r in rows}):
        side = run.strides.get(slide, float(run.config.tile_size))
        write_feature_collection(folder / f"{slide}.geojson",
                                 [query_feature(r, side, round_number, colours) for r in rows if r["slide"] == slide])
    if not run.options.figures or not rows:
        return
    position = {int(i): k for k, i in enumerate(selection.ids)}
    triplets: list[list[np.ndarray]] = [[] for _ in rows]
    for inputs, _, gid in run.dataset(selection.ids, with_ids=True):
        arrays = [inputs[name].numpy().astype(np.uint8) for name in inputs]
        for j, i in enumerate(gid.numpy()):
            triplets[position[int(i)]] = [a[j] for a in arrays]
    heads = [f"{m:g}x" for m in run.config.magnifications]
    pages = -(-len(rows) // SHEET_CELLS)
    for page in range(pages):
        cells = slice(page * SHEET_CELLS, (page + 1) * SHEET_CELLS)
        title = (f"Round {round_number} queries ({selection.strategy or run.options.strategy}), page {page + 1} of "
                 f"{pages}: #n is the square 'round {round_number} #n' in QuPath")
        plots.contact_sheet(triplets[cells], [caption(r) for r in rows[cells]], heads, title,
                            folder / f"contact_sheet_{page + 1}.png")


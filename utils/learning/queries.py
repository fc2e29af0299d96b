"""Which tiles a round asks the pathologist to label (:func:`query`), and the
three forms it writes them in (:func:`write_queries`), which share one
numbering ``#n`` (1 = the first pick):

* ``queries.csv``: one row per queried tile;
* ``<slide>.geojson``: one locked square per tile for QuPath, named
  ``round k #n (class?)`` after the model's predicted class and drawn in that
  class's colour, but unclassified, and carrying the strategy's score, its
  rank in the pool, the two likeliest classes' probabilities and the tile's
  centre as QuPath ``measurements``;
* ``contact_sheet_<page>.png``: the tiles at every magnification, numbered
  like the squares, a page per ``SHEET_CELLS`` tiles.

Read back after the pathologist's export, a square's label is the class the
pathologist set, the predicted one (a confirmation) or another; a square left
without a class was not reviewed, and it stays unlabelled, as do QuPath's
``Ignore*`` class and a deleted square
(:meth:`utils.common.config.Config.annotation_role`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.common import plots
from utils.common.config import Config, hex_to_rgb, query_square_name
from utils.common.io import atomic_write_csv
from utils.learning.active_learning import Pool, get_strategy, select
from utils.learning.learners import Learner
from utils.learning.run_state import RunState
from utils.learning.train_options import TrainOptions
from utils.learning.training_data import TrainingData
from utils.slides.qupath import square, write_feature_collection
from utils.tiles.records import RecordIndex

#: Tiles per contact sheet page.
SHEET_CELLS = 24
#: The columns of queries.csv.
COLUMNS = ("number", "slide", "x", "y", "predicted", "probability", "second", "second_probability", "score_name",
           "score", "rank", "label")
#: What ``--warm-start`` draws with: the class-ratio rule with equal shares, by predicted class.
WARM_START = "class-balanced random (warm start)"


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


def query(data: TrainingData, learner: Learner, options: TrainOptions, state: RunState) -> Selection:
    """Choose the next ``budget`` tiles from the pool, given the labelled set
    and the last round's validation errors of ``state``. Writes nothing
    (:func:`write_queries` does); draws from ``state.rng`` only.

    Class budgets (``class_ratio``, the warm start) go by the model's
    predicted class of each pool tile, as they must in real use; only
    ``--oracle-classes`` lets a simulation use the true labels."""
    o, labelled = options, state.labelled
    pool_ids = np.setdiff1d(data.pool_ids, labelled)
    warm = len(labelled) < o.warm_start * len(np.union1d(data.pool_ids, labelled))
    if o.pool_sample and len(pool_ids) > o.pool_sample:
        pool_ids = np.sort(state.rng.choice(pool_ids, size=o.pool_sample, replace=False))
    if len(pool_ids) == 0:
        return Selection(pool_ids, None, None, 0)
    name = "class_ratio" if warm else o.strategy
    strategy = get_strategy(name)
    needs_model = strategy.needs_predictions or strategy.class_ratio and not o.oracle_classes or o.query_only
    scored = learner.predict(pool_ids, o.mc_passes if strategy.mc_passes else 0,
                             embeddings=strategy.embeddings or strategy.gradients) if needs_model else None
    pool = Pool(data.index.slide[pool_ids], data.index.x[pool_ids], data.index.y[pool_ids], data.index.label[pool_ids])
    if scored is not None:
        order = np.argsort(scored["ids"])
        pool_ids = scored["ids"][order]
        pool = Pool(data.index.slide[pool_ids], data.index.x[pool_ids], data.index.y[pool_ids],
                    data.index.label[pool_ids] if o.oracle_classes else scored["probs"][order].argmax(axis=1),
                    **{key: (scored[key][:, order] if key == "mc_probs" else scored[key][order])
                       for key in ("probs", "mc_probs", "embeddings", "penultimate") if key in scored})
    if strategy.embeddings and len(labelled):
        pool.labelled_embeddings = learner.predict(labelled, embeddings=True)["embeddings"]
    stride = float(np.median(list(data.strides.values()))) if data.strides else 1.0
    shares = np.zeros(data.config.num_classes) if warm else state.misclassified
    positions, scores = select(name, o.budget_of(state.round + 1), pool, state.rng, shares, data.config.num_classes,
                               stride=stride, spacing=o.spacing)
    probs = pool.probs[positions] if pool.probs is not None else None
    return Selection(pool_ids[positions], strategy.score_sign * scores[positions] if scores is not None else None,
                     probs.argmax(axis=1) if probs is not None else None, len(pool_ids),
                     WARM_START if warm else o.strategy, probs,
                     score_ranks(scores)[positions] if scores is not None else None, strategy.score_name or "score")


def query_rows(selection: Selection, index: RecordIndex, class_names: list[str]) -> list[dict[str, Any]]:
    """One dict per query, in pick order: number, place, prediction, the
    second likeliest class, the score under its name, its rank, and the known
    label (empty in real use)."""
    names = class_names
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


def query_feature(row: dict[str, Any], side: float, round_number: int, colours: dict[str, str],
                  origin: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """The QuPath annotation of one query: a locked square of the tile's
    footprint, named ``round k #n (class?)`` after the predicted class and
    drawn in its colour, but unclassified: only a class the pathologist sets
    makes it a label, so a square nobody reviewed never becomes one. Numeric
    measurements only, as QuPath stores them."""
    measurements: dict[str, float] = {}
    if row["score"] is not None:
        measurements[row["score_name"]] = row["score"]
    if row["rank"] is not None:
        measurements["rank in pool"] = row["rank"]
    for name, probability in ((row["predicted"], row["probability"]), (row["second"], row["second_probability"])):
        if probability is not None:
            measurements[f"P({name})"] = probability
    # The centre as QuPath shows it: in its frame, from the slide's bounds.
    measurements["centre x (px)"] = float(row["x"]) - origin[0]
    measurements["centre y (px)"] = float(row["y"]) - origin[1]
    name = query_square_name(round_number, row["number"], row["predicted"])
    properties: dict[str, Any] = {"objectType": "annotation", "name": name, "isLocked": True,
                                  "measurements": measurements}
    if row["predicted"]:
        properties["color"] = list(hex_to_rgb(colours[row["predicted"]]))
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square(row["x"], row["y"], side)},
            "properties": properties}


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


def write_queries(folder: Path, selection: Selection, round_number: int, index: RecordIndex, config: Config,
                  strides: dict[str, float], origins: dict[str, tuple[float, float]],
                  triplets: list[list[np.ndarray]] | None) -> None:
    """``folder``: queries.csv (level-0 pixels), one QuPath GeoJSON per slide
    (squares as wide as the slide's tile stride, in QuPath's frame: less the
    slide's ``origins``) and, when the tiles of every scale are given
    (``triplets``, in the order of ``selection.ids``), the contact sheet pages."""
    rows = query_rows(selection, index, config.class_names)
    atomic_write_csv(folder / "queries.csv", list(COLUMNS), [[r[key] for key in COLUMNS] for r in rows])
    colours = {c["name"]: c["color"] for c in config.classes}
    for slide in sorted({r["slide"] for r in rows}):
        side = strides.get(slide, float(config.tile_size))
        origin = origins.get(slide, (0.0, 0.0))
        write_feature_collection(folder / f"{slide}.geojson",
                                 [query_feature(r, side, round_number, colours, origin) for r in rows
                                  if r["slide"] == slide], origin)
    if triplets is None or not rows:
        return
    heads = [f"{m:g}x" for m in config.magnifications]
    pages = -(-len(rows) // SHEET_CELLS)
    for page in range(pages):
        cells = slice(page * SHEET_CELLS, (page + 1) * SHEET_CELLS)
        title = (f"Round {round_number} queries ({selection.strategy}), page {page + 1} of "
                 f"{pages}: #n is the square 'round {round_number} #n' in QuPath")
        plots.contact_sheet(triplets[cells], [caption(r) for r in rows[cells]], heads, title,
                            folder / f"contact_sheet_{page + 1}.png")

"""The anchor of every label-efficiency figure: what a pathologist already has.

QuPath's pixel classifier is a random forest on multi-scale filter
responses. Here it is a random forest (and, beside it, a logistic
regression) on the texture backbone's statistics of each tile
(:func:`utils.network.texture.feature_model`: the same filters, computed by the
project's own layers, so no script copies them), fitted on exactly the tiles
a run had labelled after each round, and scored on the same test tiles. With
the labelled sets of a ``random`` run it is the everyday alternative on the
same images, splits, fractions and seeds; with the source lab's labels added
it is what a lab that pools its data would do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from experiments.analysis import Curve
from utils.common.config import load_config
from utils.common.io import atomic_write_json
from utils.common.scales import Scales
from utils.learning.run_files import LABELLED_FILE, read_labelled
from utils.tiles.records import RecordIndex, read_index, record_files, triplet_dataset

#: The anchors, by the name their table rows carry.
ANCHORS = ("forest", "forest, source + target", "logistic regression")
FOREST_TREES = 200
#: How an anchor's row is named in the tables of the other experiments.
ROW_SUFFIX = " (anchor)"
EXPERIMENT_CONFIG = Path(__file__).resolve().parent / "kather.yaml"


def features(records: Path, cache: Path, scales: Scales) -> tuple[RecordIndex, np.ndarray]:
    """Every record's texture statistics, computed once and kept in ``cache`` (.npy)."""
    index = read_index(record_files(records))
    if cache.exists():
        values = np.load(cache, allow_pickle=False)
        if len(values) == len(index.label):
            return index, values
    from utils.network.texture import feature_model  # TensorFlow only where features are computed

    model = feature_model(scales.tile_size, scales.names)
    dataset = triplet_dataset(index, np.arange(len(index.label)), scales, 256)
    values = np.concatenate([model(inputs, training=False).numpy() for inputs, _ in dataset])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache.with_suffix(".tmp.npy"), values)
    cache.with_suffix(".tmp.npy").rename(cache)
    return index, values


def labelled_by_round(run: Path, index: RecordIndex) -> dict[int, np.ndarray]:
    """Record ids labelled up to and including each round of a run (its ``labelled.csv``)."""
    where = {(s, int(x), int(y)): i for i, (s, x, y) in enumerate(zip(index.slide, index.x, index.y))}
    tiles = read_labelled(run)
    added = np.array([tile.round for tile in tiles])
    ids = np.array([where[(tile.slide, tile.x, tile.y)] for tile in tiles])
    return {k: np.sort(ids[added <= k]) for k in sorted(set(added.tolist()))}


def classifier(name: str, seed: int) -> RandomForestClassifier | Pipeline:
    if name.startswith("forest"):
        return RandomForestClassifier(FOREST_TREES, random_state=seed, n_jobs=1)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def anchor_curve(name: str, target: tuple[np.ndarray, np.ndarray], sets: dict[int, np.ndarray],
                 evaluated: dict[str, np.ndarray], seed: int,
                 source: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, list[float]]:
    """Macro F1 of the anchor ``name`` fitted on each labelled set in turn
    (target features and labels; ``source`` added for the source + target
    forest), on each of the ``evaluated`` sets (e.g. val and test ids), over
    the classes present in that set, as the runs score."""
    values, labels = target
    scores: dict[str, list[float]] = {split: [] for split in evaluated}
    for k in sorted(sets):
        x, y = values[sets[k]], labels[sets[k]]
        if source is not None:
            x, y = np.concatenate([source[0], x]), np.concatenate([source[1], y])
        model = classifier(name, seed).fit(x, y)
        for split, ids in evaluated.items():
            present = np.unique(labels[ids])
            scores[split].append(float(f1_score(labels[ids], model.predict(values[ids]), labels=present,
                                                average="macro", zero_division=0)))
    return scores


def curves_for(out: Path, lab: str, runs: list[Path], pool: int, tile_size: int) -> dict[str, dict[str, list[Curve]]]:
    """Each anchor's validation and test curves (one per run, in order) on the
    target lab ``lab`` of an experiment folder ``out`` (``records/``,
    ``staged/target_split.json``), fitted on the labelled sets of ``runs``.
    Kept in ``out/anchor/`` under a digest of those labelled sets, so that a
    report written again fits nothing."""
    digest = hashlib.sha1(json.dumps([lab, pool, tile_size, FOREST_TREES, ANCHORS]).encode())
    for run in runs:
        digest.update((run / LABELLED_FILE).read_bytes())
    kept = out / "anchor" / f"curves_{lab}_{digest.hexdigest()[:16]}.json"
    if kept.exists():
        saved = json.loads(kept.read_text())
        return {name: {split: [Curve(np.array(c[0]), np.array(c[1])) for c in curves] for split, curves in splits.items()}
                for name, splits in saved.items()}
    scales = Scales(tuple(load_config(EXPERIMENT_CONFIG).magnifications), tile_size)
    index, values = features(out / "records" / f"target_{lab}", out / "anchor" / f"target_{lab}_{tile_size}px.npy",
                             scales)
    source_index, source_values = features(out / "records" / "source", out / "anchor" / f"source_{tile_size}px.npy",
                                           scales)
    split = json.loads((out / "staged" / "target_split.json").read_text())
    evaluated = {name: np.flatnonzero(np.isin(index.slide, split[name]) & (index.label >= 0)) for name in ("val", "test")}
    labelled = np.flatnonzero(source_index.label >= 0)
    source = (source_values[labelled], source_index.label[labelled])
    curves: dict[str, dict[str, list[Curve]]] = {name: {"val": [], "test": []} for name in ANCHORS}
    for seed, run in enumerate(runs):
        sets = labelled_by_round(run, index)
        fractions = np.array([len(sets[k]) / pool for k in sorted(sets)])
        for name in ANCHORS:
            scores = anchor_curve(name, (values, index.label), sets, evaluated, seed,
                                  source if "source" in name else None)
            for split_name, f1 in scores.items():
                curves[name][split_name].append(Curve(fractions, np.array(f1)))
    atomic_write_json(kept, {name: {split: [[c.fraction.tolist(), c.f1.tolist()] for c in cs]
                                    for split, cs in splits.items()} for name, splits in curves.items()})
    return curves

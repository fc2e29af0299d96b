"""The anchor of every label-efficiency figure: what a pathologist already has.

QuPath's pixel classifier is a random forest on multi-scale filter
responses. Here it is a random forest (and, beside it, a logistic
regression) on the texture backbone's statistics of each tile
(:func:`utils.texture.feature_model`: the same filters, computed by the
project's own layers, so no script copies them), fitted on exactly the tiles
a run had labelled after each round, and scored on the same test tiles. With
the labelled sets of a ``random`` run it is the everyday alternative on the
same images, splits, fractions and seeds; with the source lab's labels added
it is what a lab that pools its data would do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from utils.config import scale_name
from utils.io import read_csv
from utils.records import RecordIndex, read_index, record_files, triplet_dataset

#: The anchors, by the name their table rows carry.
ANCHORS = ("forest", "forest, source + target", "logistic regression")
FOREST_TREES = 200


def features(records: Path, cache: Path, magnifications: list[float], tile_size: int) -> tuple[RecordIndex, np.ndarray]:
    """Every record's texture statistics, computed once and kept in ``cache`` (.npy)."""
    index = read_index(record_files(records))
    if cache.exists():
        values = np.load(cache)
        if len(values) == len(index.label):
            return index, values
    from utils.texture import feature_model  # TensorFlow only where features are computed

    model = feature_model(tile_size, [scale_name(m) for m in magnifications])
    dataset = triplet_dataset(index, np.arange(len(index.label)), magnifications, tile_size, 256)
    values = np.concatenate([model(inputs, training=False).numpy() for inputs, _ in dataset])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache.with_suffix(".tmp.npy"), values)
    cache.with_suffix(".tmp.npy").rename(cache)
    return index, values


def labelled_by_round(run: Path, index: RecordIndex) -> dict[int, np.ndarray]:
    """Record ids labelled up to and including each round of a run (its ``labelled.csv``)."""
    where = {(s, int(x), int(y)): i for i, (s, x, y) in enumerate(zip(index.slide, index.x, index.y))}
    rows = read_csv(run / "labelled.csv")
    added = np.array([int(r["round"]) for r in rows])
    ids = np.array([where[(r["slide"], int(r["x"]), int(r["y"]))] for r in rows])
    return {k: np.sort(ids[added <= k]) for k in sorted(set(added.tolist()))}


def classifier(name: str, seed: int):
    if name.startswith("forest"):
        return RandomForestClassifier(FOREST_TREES, random_state=seed, n_jobs=1)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def anchor_curve(name: str, target: tuple[np.ndarray, np.ndarray], sets: dict[int, np.ndarray],
                 test_ids: np.ndarray, seed: int, source: tuple[np.ndarray, np.ndarray] | None = None) -> list[float]:
    """Test macro F1 of the anchor ``name`` fitted on each labelled set in
    turn (target features and labels; ``source`` added for the source + target
    forest), over the classes present in the test split, as the runs score."""
    values, labels = target
    present = np.unique(labels[test_ids])
    scores = []
    for k in sorted(sets):
        x, y = values[sets[k]], labels[sets[k]]
        if source is not None:
            x, y = np.concatenate([source[0], x]), np.concatenate([source[1], y])
        model = classifier(name, seed).fit(x, y)
        predicted = model.predict(values[test_ids])
        scores.append(float(f1_score(labels[test_ids], predicted, labels=present, average="macro", zero_division=0)))
    return scores

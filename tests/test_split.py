"""Splits for one or two slides: blocks of each slide's grid, with no
lowest-magnification window shared between training and evaluation, checked
against the windows' own geometry as the records describe it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial import cKDTree

import active_learning_train
import tfrecord_generator
from tests.conftest import FAST, RECORD_TILE as TILE
from utils.common.errors import InputError
from utils.learning.data_split import (BLOCK_WINDOWS, SlideGrid, assign_records, choose_split_by, extend_split,
                                       split_blocks, split_slides)
from utils.tiles.records import RecordIndex, read_index, record_files
from utils.tiles.synthetic import make_slide, random_layout

MAGNIFICATIONS = ["40", "20", "10"]


@pytest.fixture(scope="module")
def one_slide(tmp_path_factory) -> Path:
    """One 2560-px synthetic slide cut into 32-px triplets at 40x, 20x and 10x."""
    root = tmp_path_factory.mktemp("one_slide")
    make_slide(root / "slides", "only", 2560, 2560, random_layout(2560, 2560, 3, margin=64), seed=3,
               annotations_dir=root / "annotations")
    assert tfrecord_generator.main(["--slides", str(root / "slides"), "--annotations", str(root / "annotations"),
                                    "--output", str(root / "tiles"), "--tile-size", str(TILE),
                                    "--magnifications", *MAGNIFICATIONS, "--unlabeled"]) == 0
    return root / "tiles"


def coarsest_window(tiles: Path) -> float:
    """Side of the 10x window in level-0 pixels, from a record's own µm/px and
    the slide's (not from the split code's geometry)."""
    record = next(iter(tf.data.TFRecordDataset(str(next(tiles.glob("*.tfrecord")))).take(1)))
    example = tf.train.Example.FromString(record.numpy())
    mpp_coarsest = example.features.feature[f"mpp/{len(MAGNIFICATIONS) - 1}"].float_list.value[0]
    base = json.loads(next(tiles.glob("*.summary.json")).read_text())["base_mpp"]
    return TILE * mpp_coarsest / base


def overlapping(a: np.ndarray, b: np.ndarray, window: float) -> int:
    """Pairs of centres (rows of a and b) whose square windows share pixels:
    closer than a window side in the maximum norm (scipy's KD-tree)."""
    if len(a) == 0 or len(b) == 0:
        return 0
    return int(cKDTree(a).count_neighbors(cKDTree(b), r=np.nextafter(window, 0), p=np.inf))


def test_one_slide_is_split_into_blocks_whose_windows_never_meet(one_slide, tmp_path):
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="1 slide.*--split-by block"):
        assert active_learning_train.main(["--data", str(one_slide), "--output", str(run), "--rounds", "0",
                                           *FAST]) == 0
    split = json.loads((run / "split.json").read_text())
    assert split["by"] == "block" and all(split[name] for name in ("train", "val", "test"))
    window = coarsest_window(one_slide)
    assert window == pytest.approx(4 * TILE)  # 40x over 10x
    index = read_index(record_files(one_slide))
    centres = np.stack([index.x, index.y], axis=1).astype(float)
    side = split["block_side_level0"]["only"]
    assert side == pytest.approx(BLOCK_WINDOWS * window)
    member = {name: np.isin([f"only:{int(x // side)},{int(y // side)}" for x, y in centres], split[name])
              for name in ("train", "val", "test")}
    assert not (member["train"] & member["val"]).any() and not (member["val"] & member["test"]).any()
    # What training actually used: labelled.csv (train) and the class counts of val and test.
    used = {(row["x"], row["y"]) for row in _rows(run / "labelled.csv")}
    train = np.array([[float(x), float(y)] for x, y in used])
    counts = json.loads((run / "class_counts.json").read_text())
    codes, dropped = assign_records(index, split, {"only": SlideGrid(TILE, window)})
    evaluation = centres[(codes >= 1) & (index.label >= 0)]
    for code, name in ((1, "val"), (2, "test")):  # FAST caps evaluation at 40 tiles per class
        expected = np.bincount(index.label[(codes == code) & (index.label >= 0)], minlength=6)
        assert list(counts[name].values()) == np.minimum(expected, 40).tolist()
    assert overlapping(train, evaluation, window) == 0
    assert overlapping(centres[codes == 1], centres[codes == 2], window) == 0
    # The guard band costs tiles, but the blocks are wide enough that most survive.
    assert 0 < dropped["train"] < 0.5 * (codes == 0).sum()
    # Without the guard, neighbouring blocks of different splits would share windows.
    naive = centres[member["train"]], centres[member["val"] | member["test"]]
    assert overlapping(*naive, window) > 0
    # The file written is accepted back and gives the same sets.
    again = tmp_path / "again"
    assert active_learning_train.main(["--data", str(one_slide), "--output", str(again), "--rounds", "0",
                                       "--split", str(run / "split.json"), *FAST]) == 0
    assert json.loads((again / "class_counts.json").read_text()) == counts


def _rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as handle:
        return list(csv.DictReader(handle))


def synthetic_index(width: int, height: int, labels: np.ndarray) -> RecordIndex:
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    n = cols.size
    return RecordIndex([Path("s.tfrecord")], np.array([0]), np.array(["s"] * n), labels.ravel().astype(np.int64),
                       np.array([""] * n), ((cols.ravel() + 0.5) * 128).astype(np.int64),
                       ((rows.ravel() + 0.5) * 128).astype(np.int64))


def test_block_side_follows_the_magnifications_and_classes_are_stratified():
    """40x/10x/2.5x: a 2.5x window spans 16 tiles of 40x, so blocks are 64 tiles
    wide and the guard is 15 tiles; two classes in horizontal bands each reach
    validation and test."""
    grid = SlideGrid(stride=128.0, window=128.0 * 16)
    assert grid.window_tiles == 16 and grid.block_side == 64 * 128
    labels = np.zeros((320, 320), np.int64)
    labels[160:] = 1
    index = synthetic_index(320, 320, labels)
    split = split_blocks(index, {"s": grid}, 2, (0.8, 0.1, 0.1), seed=0)
    codes, _ = assign_records(index, split, {"s": grid})
    for code in (1, 2):
        assert set(np.unique(index.label[codes == code])) == {0, 1}
    points = np.stack([index.x, index.y], axis=1).astype(float)
    assert overlapping(points[codes == 0], points[codes >= 1], grid.window) == 0


def test_too_few_blocks_and_too_few_slides_say_what_to_do():
    grid = SlideGrid(stride=128.0, window=128.0 * 16)
    index = synthetic_index(64, 64, np.zeros((64, 64)))
    with pytest.raises(InputError, match="1 block"):
        split_blocks(index, {"s": grid}, 1, (0.8, 0.1, 0.1), seed=0)
    with pytest.raises(InputError, match="--split-by block"):
        choose_split_by("slide", ["a", "b"])
    assert choose_split_by(None, ["a", "b", "c"]) == "slide"


def test_slides_without_labels_are_pool_only_and_never_scored():
    """A slide taken whole by --unlabeled never lands in validation or test,
    whatever the seed (before, some seeds put it there: an error, or a test
    score of NaN with exit 0)."""

    landed = set()
    for seed in range(40):
        split = split_slides(["a", "b", "c", "d", "pool"], (0.6, 0.2, 0.2), seed, labelled=["a", "b", "c", "d"])
        assert "pool" in split["train"] and "pool" not in split["val"] + split["test"]
        landed |= set(split["val"]) | set(split["test"])
    assert landed == {"a", "b", "c", "d"}, "every annotated slide can still be drawn for evaluation"
    plain = split_slides(["a", "b", "c", "d"], (0.6, 0.2, 0.2), 7)
    assert plain == split_slides(["a", "b", "c", "d"], (0.6, 0.2, 0.2), 7, labelled=["a", "b", "c", "d"]), \
        "annotated cohorts split as before"
    with pytest.raises(InputError, match="needs at least 3 slides with labelled tiles"):
        split_slides(["a", "b", "pool"], (0.6, 0.2, 0.2), 0, labelled=["a", "b"])


def test_the_per_slide_cap_draws_at_random_not_the_first_tiles_in_scan_order():
    """The original kept the first 1,000 tiles of a slide and class in scan
    order, the top of the slide; here the cap draws them at random, seeded."""
    from utils.learning.data_split import cap_per_slide_and_class
    from utils.tiles.records import RecordIndex

    n = 5000
    rows = np.arange(n) // 50  # scan order: row by row
    index = RecordIndex(files=[], offsets=np.zeros(0, np.int64), slide=np.array(["s"] * n, dtype=object),
                        label=np.ones(n, np.int64), label_name=np.array(["x"] * n, dtype=object),
                        x=(np.arange(n) % 50) * 64, y=rows * 64)
    kept = cap_per_slide_and_class(np.arange(n), index, 1000, [], np.random.default_rng(0))
    assert len(kept) == 1000 and not np.array_equal(kept, np.arange(1000))
    assert abs(rows[kept].mean() - rows.mean()) < 5, "drawn from the whole slide, not its top fifth"
    assert np.array_equal(kept, cap_per_slide_and_class(np.arange(n), index, 1000, [], np.random.default_rng(0)))


def _index(slides: list[str], labels: np.ndarray, width: int = 40) -> RecordIndex:
    """Records on a ``width``-wide grid of 128-px steps per slide (row-major)."""
    k = np.arange(len(labels)) % (width * width)
    return RecordIndex([Path("s.tfrecord")], np.array([0]), np.array(slides, dtype=object), labels.astype(np.int64),
                       np.array([""] * len(labels)), ((k % width + 0.5) * 128).astype(np.int64),
                       ((k // width + 0.5) * 128).astype(np.int64))


def test_labels_added_between_rounds_join_the_split_their_slide_already_has():
    """Slide split: a label on a pool-only slide, labels on a validation
    slide and a slide new to the data. Drawing the split again from the new
    labels (what a resumed run did) moves whole slides; the kept split
    never moves a tile."""

    names = ["a", "b", "c", "d", "pool"]
    per = 200
    slides = np.repeat(names, per)
    before = np.where(slides == "pool", -1, np.arange(len(slides)) % 3)
    kept = split_slides(slides, (0.6, 0.2, 0.2), 0, labelled=sorted(set(slides[before >= 0])))
    old = _index(list(slides), before)
    old_codes, _ = assign_records(old, kept, {})
    after = before.copy()
    after[slides == "pool"] = np.where(np.arange(per) < 3, 1, -1)  # three squares answered on the pool slide
    val_slide = kept["val"][0]
    grown = np.concatenate([after, np.zeros(per, np.int64)])
    new = _index([*slides, *["new"] * per], grown)
    redrawn = split_slides(new.slide, (0.6, 0.2, 0.2), 0, labelled=sorted(set(new.slide[new.label >= 0])))
    moved = assign_records(new, redrawn, {})[0][: len(slides)] != old_codes
    assert moved.any(), "redrawing from the new labels moves slides (the defect)"
    split, added = extend_split(kept, new)
    assert added == ["new"] and set(split["val"]) == {val_slide} and split["test"] == kept["test"]
    codes, _ = assign_records(new, split, {})
    np.testing.assert_array_equal(codes[: len(slides)], old_codes)
    assert (codes[len(slides):] == 0).all(), "a slide new to the data trains"


def test_labels_added_on_new_blocks_train_and_listed_blocks_keep_their_split():
    grid = SlideGrid(stride=128.0, window=128.0 * 4)  # blocks of 16 tiles
    labels = np.full(1600, -1)
    labels[: 800] = (np.arange(800) // 40 // 8) % 2  # the top half labelled, two classes in bands
    old = _index(["s"] * 1600, labels)
    kept = split_blocks(old, {"s": grid}, 2, (0.6, 0.2, 0.2), seed=1)
    listed = {e for name in ("train", "val", "test") for e in kept[name]}
    old_codes, _ = assign_records(old, kept, {"s": grid})
    grown = labels.copy()
    grown[1500:1503] = 1  # answers at the bottom, in blocks that were pool only
    grown[np.flatnonzero(old_codes == 1)[:5]] = 0  # and labels added inside a validation block
    new = _index(["s"] * 1600, grown)
    split, added = extend_split(kept, new)
    assert not set(added) & listed and all(name.startswith("s:") for name in added)
    codes, _ = assign_records(new, split, {"s": grid})
    np.testing.assert_array_equal(codes, old_codes)
    redrawn = assign_records(new, split_blocks(new, {"s": grid}, 2, (0.6, 0.2, 0.2), seed=1), {"s": grid})[0]
    assert (redrawn != old_codes).any(), "drawing the blocks again from the new labels moves tiles (the defect)"


def test_a_resumed_run_keeps_its_split_and_stops_when_its_data_no_longer_fits(one_slide, tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.warns(UserWarning):
        assert active_learning_train.main(["--data", str(one_slide), "--output", str(run), "--rounds", "0",
                                           *FAST]) == 0
    split = json.loads((run / "split.json").read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**split, "train": split["val"], "val": split["train"]}))
    assert active_learning_train.main(["--data", str(one_slide), "--output", str(run), "--rounds", "1",
                                       "--resume", "--split", str(other), *FAST]) == 2
    assert "differs from the split of the run being resumed" in capsys.readouterr().err
    same = tmp_path / "same.json"
    same.write_text(json.dumps(split))
    assert active_learning_train.main(["--data", str(one_slide), "--output", str(run), "--rounds", "1",
                                       "--resume", "--split", str(same), *FAST]) == 0, "the split it started with"
    assert json.loads((run / "split.json").read_text()) == split
    (run / "split.json").write_text(json.dumps({**split, "test": [*split["test"], "gone"]}))
    assert active_learning_train.main(["--data", str(one_slide), "--output", str(run), "--rounds", "1",
                                       "--resume", *FAST]) == 2
    err = capsys.readouterr().err
    assert "['gone']" in err and "keeps the split it started with" in err

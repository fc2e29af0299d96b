"""The record schema and its ``tf.data`` reader.

One TFRecord shard per slide; each ``tf.train.Example`` is one tile triplet:

========== ======= ===========================================================
key        type    meaning
========== ======= ===========================================================
slide      bytes   slide stem
label      int64   class index, or -1 for an unlabelled (pool) tile
label_name bytes   the annotation's own class name ("" when unlabelled)
x, y       int64   tile centre in level-0 pixels
image/<i>  bytes   PNG (default) or JPEG tile of scale i; 0 = highest magnification
mpp/<i>    float   µm/px of scale i
========== ======= ===========================================================

Records are addressed by a global id: the position of the shard in the sorted
file list, then the record's position in its shard (:func:`read_index`). The
training set is a set of ids, streamed with :func:`triplet_dataset`, so it can
be larger than memory; each record is read by its byte offset
(:mod:`utils.tiles.record_offsets`), so a pass over a few labelled records costs
the same in a pool of a thousand or of a million.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from utils.common.errors import InputError
from utils.common.log import info
from utils.common.scales import Scales
from utils.tiles.augment import StrongView, augment_triplet, weak_and_strong_views
from utils.tiles.record_offsets import INDEX_SUFFIX, RecordReader, shard_offsets
from utils.tiles.stain_jitter import StainJitter

RECORD_SUFFIX = ".tfrecord"
#: Records handed from the offset reader to tf.data at a time.
_CHUNK = 256
UNLABELED = -1


def encode_tile(tile: np.ndarray, encoding: str) -> bytes:
    """PNG (lossless, fast level 1) or JPEG (quality 90) bytes of an RGB tile."""
    bgr = np.ascontiguousarray(tile[..., ::-1])
    if encoding == "png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif encoding == "jpeg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    else:
        raise InputError(f"unknown tile encoding {encoding!r}; choose png or jpeg")
    if not ok:
        raise InputError(f"OpenCV could not encode a {tile.shape} tile as {encoding}")
    return data.tobytes()


def make_example(
    slide: str, label: int, label_name: str, x: int, y: int, tiles: Sequence[bytes], mpps: Sequence[float]
) -> bytes:
    def b(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    def f(v: float) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))

    feature = {
        "slide": b(slide.encode()),
        "label": i(label),
        "label_name": b(label_name.encode()),
        "x": i(x),
        "y": i(y),
    }
    for scale, (data, mpp) in enumerate(zip(tiles, mpps)):
        feature[f"image/{scale}"] = b(data)
        feature[f"mpp/{scale}"] = f(mpp)
    # deterministic: map entries sorted by key, so the same tiles give the same bytes in any process
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


_META = {
    "slide": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "label_name": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "x": tf.io.FixedLenFeature([], tf.int64),
    "y": tf.io.FixedLenFeature([], tf.int64),
}


def _image_features(num_scales: int) -> dict[str, tf.io.FixedLenFeature]:
    return {f"image/{s}": tf.io.FixedLenFeature([], tf.string) for s in range(num_scales)}


def record_files(data_dir: str | Path) -> list[Path]:
    """The shards of a directory, sorted so global ids are stable."""
    return sorted(Path(data_dir).glob(f"*{RECORD_SUFFIX}"))


@dataclass
class RecordIndex:
    """Metadata of every record, aligned with global ids (no image is decoded)."""

    files: list[Path]
    offsets: np.ndarray  # first global id of each file
    slide: np.ndarray  # str
    label: np.ndarray  # int64
    label_name: np.ndarray  # str
    x: np.ndarray
    y: np.ndarray
    #: Byte offsets, lengths and shard of every record (:meth:`reader`), found on first use.
    _located: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.label)

    def reader(self) -> RecordReader:
        """A reader of single records by global id (one per pipeline: it holds open files)."""
        if self._located is None:
            offsets, lengths, built = [], [], 0
            for k, path in enumerate(self.files):
                starts, shard_lengths, new = shard_offsets(path)
                expected = (self.offsets[k + 1] if k + 1 < len(self.files) else len(self)) - self.offsets[k]
                if len(starts) != expected:
                    raise InputError(f"{path}: {len(starts)} records by their headers but {expected} when "
                                     f"read; the shard changed while in use, or is corrupt: re-extract it")
                offsets.append(starts)
                lengths.append(shard_lengths)
                built += new
            if built:
                info(f"indexed {built} shard(s) by record offset, once (kept beside each as "
                     f"<shard>{INDEX_SUFFIX}): an epoch now reads only the records it trains on")
            shard_of = np.repeat(np.arange(len(self.files)), [len(o) for o in offsets])
            joined = (np.concatenate(offsets) if offsets else np.zeros(0, np.int64))
            self._located = (joined, np.concatenate(lengths) if lengths else np.zeros(0, np.int64), shard_of)
        return RecordReader(self.files, *self._located)


def read_index(files: Sequence[str | Path]) -> RecordIndex:
    """Scan shards once, parsing only the small fields."""
    files = [Path(f) for f in files]
    columns: dict[str, list[np.ndarray]] = {k: [] for k in _META}
    counts = []
    for path in files:
        count = 0
        dataset = tf.data.TFRecordDataset(str(path)).batch(4096)
        try:
            for batch in dataset.map(lambda s: tf.io.parse_example(s, _META)):
                for key in _META:
                    columns[key].append(batch[key].numpy())
                count += len(batch["label"])
        except tf.errors.DataLossError:
            raise InputError(f"{path}: truncated or corrupt TFRecord shard; delete it and its .summary.json "
                             f"and rerun tfrecord_generator.py") from None
        except tf.errors.InvalidArgumentError as exc:
            raise InputError(f"{path}: not a shard of this project's record schema ({exc.message.splitlines()[0]}); "
                             f"write the shards with tfrecord_generator.py") from None
        counts.append(count)

    def joined(key: str) -> np.ndarray:
        return np.concatenate(columns[key]) if columns[key] else np.zeros(0)

    return RecordIndex(
        files=files,
        offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if files else np.zeros(0, np.int64),
        slide=np.array([s.decode() for s in joined("slide")], dtype=object),
        label=joined("label").astype(np.int64),
        label_name=np.array([s.decode() for s in joined("label_name")], dtype=object),
        x=joined("x").astype(np.int64),
        y=joined("y").astype(np.int64),
    )


def _records_by_id(index: RecordIndex, ids: np.ndarray, shuffle: bool, seed: int | None,
                   endless: bool) -> tf.data.Dataset:
    """(global id, serialized record) of ``ids``, read by byte offset: in id
    order, or with ``shuffle`` in a fresh uniform random order every pass.
    Each iteration of the dataset starts again from pass 0, the k-th pass
    drawn from (seed, k): what a consumer sees does not depend on how often
    the dataset was iterated before (a shuffled pass that must differ from
    the last is the next pass of an ``endless`` iteration), so a run repeats
    exactly. Memory: the order (8 bytes per id) and a chunk of records."""

    def generate():
        if len(ids) == 0:
            return
        reader = index.reader()
        try:
            for number in itertools.count():
                order = np.random.default_rng([seed or 0, number]).permutation(ids) if shuffle else ids
                # In chunks: the generator's cost is per element handed to tf.data.
                for start in range(0, len(order), _CHUNK):
                    chunk = order[start:start + _CHUNK]
                    yield chunk, np.array([reader.read(gid) for gid in chunk.tolist()], dtype=object)
                if not endless:
                    return
        finally:
            reader.close()

    signature = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string))
    return tf.data.Dataset.from_generator(generate, output_signature=signature).unbatch()


def _every_record(index: RecordIndex, shuffle: bool, seed: int | None) -> tf.data.Dataset:
    """(global id, serialized record) of every record, shard by shard: a
    plain pass needs no offsets."""
    files = tf.constant([str(f) for f in index.files])
    offsets = tf.constant(index.offsets, tf.int64)

    def read_file(path: tf.Tensor, offset: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path).enumerate().map(lambda i, rec: (offset + i, rec))

    dataset = tf.data.Dataset.from_tensor_slices((files, offsets))
    if shuffle:
        dataset = dataset.shuffle(len(index.files), seed=seed)
    dataset = dataset.interleave(read_file, cycle_length=min(8, max(1, len(index.files))),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.shuffle(4096, seed=seed, reshuffle_each_iteration=True) if shuffle else dataset


def triplet_dataset(
    index: RecordIndex,
    ids: np.ndarray | None,
    scales: Scales,
    batch_size: int,
    shuffle: bool = False,
    augment: bool = False,
    colour_jitter: bool = False,
    seed: int | None = None,
    with_ids: bool = False,
    endless: bool = False,
    stains: StainJitter | None = None,
    labels: np.ndarray | None = None,
    two_views: StrongView | None = None,
) -> tf.data.Dataset:
    """Batches of ``({scale name: float32 (B, T, T, 3) in 0..255}, label)``.

    The records whose global id is in ``ids`` are read by byte offset, no
    others, in id order or, with ``shuffle``, in a uniform random order drawn
    afresh every pass; ``ids`` None reads every record, shard by shard. With
    ``with_ids`` the global ids come third, for scoring a pool. Labels are -1
    for pool tiles. ``endless`` (with ``ids``) repeats the records, reshuffled
    each pass, so that every batch is full and the caller counts the steps of
    an epoch. ``augment`` (flips and rotations), ``colour_jitter`` and
    ``stains`` change each triplet
    (:func:`utils.tiles.augment.augment_triplet`). ``labels``, by global id,
    replaces the records' own labels (pseudo-labels of pool tiles).
    ``two_views`` gives each triplet as FixMatch reads a pool tile: batches
    of ``((weak inputs, strong inputs), label)``
    (:func:`utils.tiles.augment.weak_and_strong_views`).
    """
    num_scales, names = len(scales), scales.names
    label_table = None if labels is None else tf.constant(np.asarray(labels, np.int64))
    features = {**_META, **_image_features(num_scales)}
    if ids is None:
        dataset = _every_record(index, shuffle, seed)
    else:
        dataset = _records_by_id(index, np.unique(np.asarray(ids, np.int64)), shuffle, seed, endless)

    def decode(gid: tf.Tensor, record: tf.Tensor):
        parsed = tf.io.parse_single_example(record, features)
        images = []
        for s in range(num_scales):
            image = tf.io.decode_image(parsed[f"image/{s}"], channels=3, expand_animations=False)
            image.set_shape([scales.tile_size, scales.tile_size, 3])
            images.append(tf.cast(image, tf.float32))
        if two_views is not None:
            weak, strong = weak_and_strong_views(images, two_views)
            inputs = ({name: image for name, image in zip(names, weak)},
                      {name: image for name, image in zip(names, strong)})
        else:
            if augment or colour_jitter or stains is not None:
                images = augment_triplet(images, augment, colour_jitter, stains)
            inputs = {name: image for name, image in zip(names, images)}
        label = parsed["label"] if label_table is None else tf.gather(label_table, gid)
        if with_ids:
            return inputs, label, gid
        return inputs, label

    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

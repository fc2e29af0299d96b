"""Records from a folder of already-cut, labelled tiles (one sub-folder per class).

Public tile datasets such as Kather et al. 2016 come as image files sorted
into class folders rather than as slides with annotations. This writes them in
the project's record schema (one scale, one shard per source slide) so they can
train and test a MONO-CNN with ``active_learning_train.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import tensorflow as tf

from utils.errors import InputError
from utils.records import RECORD_SUFFIX, make_example

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def write_tile_folder_records(root: str | Path, output: str | Path, tile_size: int, mpp: float,
                              slide_pattern: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Write ``output/<slide>.tfrecord`` for every image under ``root/<class>/``.

    Tiles are resized to ``tile_size`` (``mpp`` is the µm/px after resizing);
    the slide of a tile is the first group of ``slide_pattern`` searched in its
    file name, so a split by slide stays possible. Class folders are sorted by
    name, and their names without a leading ``NN_`` and in lower case are the
    class names returned (label i is the i-th).
    """
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir() and p.name not in skip)
    if not folders:
        raise InputError(f"{root}: no class folders")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    writers: dict[str, tf.io.TFRecordWriter] = {}
    try:
        for label, folder in enumerate(folders):
            for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                match = re.search(slide_pattern, path.name)
                if not match:
                    raise InputError(f"{path}: no slide name matches {slide_pattern!r}")
                slide = match.group(1)
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    raise InputError(f"{path}: cannot read image")
                tile = cv2.resize(image, (tile_size, tile_size), interpolation=cv2.INTER_AREA)
                png = cv2.imencode(".png", tile)[1].tobytes()  # BGR in, RGB PNG out
                if slide not in writers:
                    writers[slide] = tf.io.TFRecordWriter(str(output / f"{slide}{RECORD_SUFFIX}"))
                writers[slide].write(make_example(slide, label, folder.name, 0, 0, [png], [mpp]))
    finally:
        for writer in writers.values():
            writer.close()
    return [re.sub(r"^\d+_", "", f.name).lower() for f in folders]

#!/usr/bin/env python
"""What one training epoch costs as the pool grows around the same labelled records.

For pools of about 10k, 100k and 1M records (synthetic shards of 1,000
records, 16-px JPEG tiles at three scales, written directly), one epoch of
the training pipeline (read, shuffled, decoded, batched; no model) over 256
and over 4,096 labelled records drawn from the pool, against the same records
written to shards of their own. The ratio is the price of the pool: the
target is at most 1.5 at every size. Also the time of one pass over the whole
pool, as scoring it each round takes: that one stays proportional to the pool.

    python benchmarks/epoch_cost.py                      # pools of 10k, 100k and 1M (about 10 minutes, 2 GB)
    python benchmarks/epoch_cost.py --pools 10000 100000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.startup import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()  # without TensorFlow's start-up notes, as the scripts load it
import tensorflow as tf  # noqa: E402

from utils.common.scales import Scales  # noqa: E402
from utils.tiles.records import read_index, record_files, triplet_dataset  # noqa: E402
from utils.tiles.synthetic import write_record_shards  # noqa: E402

TILE = 16
SCALES = Scales((40, 10, 2.5), TILE)
PER_SHARD = 1000
BATCH = 128


def epoch_seconds(folder: Path, ids: np.ndarray | None, shuffle: bool, repeats: int = 3) -> float:
    """The fastest of ``repeats`` passes of the training pipeline over ``ids`` (all when None)."""
    index = read_index(record_files(folder))
    best = float("inf")
    for k in range(repeats):
        dataset = triplet_dataset(index, ids, SCALES, BATCH, shuffle=shuffle, seed=k)
        started = time.perf_counter()
        for _ in dataset:
            pass
        best = min(best, time.perf_counter() - started)
    return best


def alone(pool: Path, ids: np.ndarray, folder: Path) -> Path:
    """The records ``ids`` of ``pool`` copied into shards of their own."""
    index = read_index(record_files(pool))
    reader = index.reader()
    folder.mkdir(parents=True)
    try:
        for start in range(0, len(ids), PER_SHARD):
            with tf.io.TFRecordWriter(str(folder / f"alone{start:07d}.tfrecord")) as writer:
                for gid in ids[start:start + PER_SHARD]:
                    writer.write(reader.read(int(gid)))
    finally:
        reader.close()
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--labelled", type=int, nargs="+", default=[256, 4096])
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.pools:
            started = time.perf_counter()
            pool = write_record_shards(Path(scratch) / f"pool{size}", slides=-(-size // PER_SHARD),
                                       per_slide=PER_SHARD, tile_size=TILE)
            written = time.perf_counter() - started
            total = len(read_index(record_files(pool)))
            epoch_seconds(pool, np.arange(0, total, max(1, total // 256)), shuffle=True, repeats=1)  # builds the index
            scoring = epoch_seconds(pool, None, shuffle=False, repeats=1)
            for count in args.labelled:
                ids = np.sort(np.random.default_rng(count).choice(total, count, replace=False))
                own = alone(pool, ids, Path(scratch) / f"alone{size}_{count}")
                in_pool, by_itself = epoch_seconds(pool, ids, shuffle=True), epoch_seconds(own, None, shuffle=True)
                rows.append((total, count, in_pool, by_itself, in_pool / by_itself, scoring))
                print(f"pool {total:>9,} (written in {written:.0f} s): epoch over {count:>5} labelled records "
                      f"{in_pool:.2f} s, alone {by_itself:.2f} s, ratio {in_pool / by_itself:.2f}; "
                      f"one pass over the pool {scoring:.1f} s", flush=True)
                shutil.rmtree(own)
            shutil.rmtree(pool)
    print("\n| pool records | labelled | epoch in the pool | the same records alone | ratio | one pass over the pool |")
    print("|---|---|---|---|---|---|")
    for total, count, in_pool, by_itself, ratio, scoring in rows:
        print(f"| {total:,} | {count:,} | {in_pool:.2f} s | {by_itself:.2f} s | {ratio:.2f} | {scoring:.1f} s |")


if __name__ == "__main__":
    main()

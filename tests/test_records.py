"""Training reads only the records it trains on, by byte offset, in a
uniform random order drawn afresh every pass."""

from __future__ import annotations

import numpy as np
import pytest

from utils.common.scales import Scales
from utils.tiles.record_offsets import index_path
from utils.tiles.records import RecordReader, read_index, record_files, triplet_dataset
from utils.tiles.synthetic import write_record_shards

MAGS = [40, 10, 2.5]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 slides of 50 records: a cohort of many slides in a few seconds."""
    return write_record_shards(tmp_path_factory.mktemp("cohort") / "records", slides=40, per_slide=50)


def order_of(index, ids, seed, passes=1):
    """The ids of ``passes`` passes of one endless iteration, pass by pass."""
    dataset = triplet_dataset(index, ids, Scales(MAGS, 16), len(ids), shuffle=True, seed=seed, with_ids=True, endless=True)
    return [gid.numpy() for _, _, gid in dataset.take(passes)]


def test_every_pass_is_a_fresh_permutation_of_the_training_set_and_a_seed_repeats_it(shards):
    index = read_index(record_files(shards))
    ids = np.random.default_rng(1).choice(len(index), 300, replace=False)
    first, second = order_of(index, ids, seed=5, passes=2)
    assert sorted(first.tolist()) == sorted(ids.tolist()) == sorted(second.tolist())
    assert not np.array_equal(first, second), "reshuffled every pass"
    again = order_of(read_index(record_files(shards)), ids, seed=5, passes=2)
    assert np.array_equal(again[0], first) and np.array_equal(again[1], second), "a seed repeats the run"
    assert not np.array_equal(order_of(index, ids, seed=6)[0], first), "another seed, another order"


def test_batches_mix_slides_as_a_uniform_draw_does(shards):
    """With 40 slides and batches of 32 drawn uniformly, a batch holds about
    22 slides; a reader that interleaves a few shards would give about 8."""
    index = read_index(record_files(shards))
    ids = np.arange(len(index))
    order = order_of(index, ids, seed=0)[0]
    slides = index.slide[order]
    per_batch = [len(set(slides[i:i + 32])) for i in range(0, len(order) - 31, 32)]
    rng = np.random.default_rng(0)
    uniform = [len(set(index.slide[rng.choice(len(index), 32, replace=False)])) for _ in range(2000)]
    assert np.mean(per_batch) == pytest.approx(np.mean(uniform), rel=0.05)


def test_a_pass_reads_its_records_and_no_others(shards, monkeypatch):
    index = read_index(record_files(shards))
    ids = np.arange(0, len(index), 97)
    read = []
    original = RecordReader.read
    monkeypatch.setattr(RecordReader, "read", lambda self, gid: read.append(gid) or original(self, gid))
    labels = [label.numpy() for _, label in triplet_dataset(index, ids, Scales(MAGS, 16), 8)]
    assert sorted(read) == ids.tolist()
    assert np.array_equal(np.concatenate(labels), index.label[ids]), "the records read are the records asked for"


def test_shards_without_an_index_get_one_on_first_use_and_a_rewritten_shard_a_new_one(tmp_path, capsys):
    folder = write_record_shards(tmp_path / "old", slides=2, per_slide=30)
    index = read_index(record_files(folder))
    assert not any(index_path(p).exists() for p in record_files(folder)), "written as before the index existed"
    first = [label.numpy() for _, label in triplet_dataset(index, np.arange(0, 60, 7), Scales(MAGS, 16), 4)]
    assert "indexed 2 shard(s) by record offset" in capsys.readouterr().out
    assert all(index_path(p).exists() for p in record_files(folder))
    read_index(record_files(folder)).reader().close()
    assert "indexed" not in capsys.readouterr().out, "the index is found, not rebuilt"
    write_record_shards(folder, slides=2, per_slide=45, seed=3)  # the shards rewritten with more records
    index = read_index(record_files(folder))
    labels = np.concatenate([label.numpy() for _, label in triplet_dataset(index, np.arange(0, 90, 7), Scales(MAGS, 16), 4)])
    assert "indexed 2 shard(s)" in capsys.readouterr().out
    assert np.array_equal(labels, index.label[np.arange(0, 90, 7)]) and len(first)

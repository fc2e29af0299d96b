"""Where each record of a shard lies, so that a pass reads the records it uses and no others.

A TFRecord file is a sequence of (8-byte length, 4-byte length CRC, data,
4-byte data CRC). Reading it front to back to keep a few hundred labelled
records out of a pool of millions costs a pass over the pool every epoch;
with the byte offset and length of every record, a training epoch instead
reads exactly its own records, in any order: a uniform shuffle over the whole
training set costs no more than a sequential pass over it.

The offsets of a shard are found by walking its headers once (12 bytes read
per record) and kept beside it as ``<shard>.offsets.npz`` with the shard's
size and a checksum of its first and last 64 KiB, so that a shard rewritten
since is indexed again. Extraction writes the index with the shard; a data
folder from before has its shards indexed on first use. A folder that cannot
be written to keeps the offsets in memory for the run.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from utils.common.errors import InputError
from utils.common.io import atomic_path

INDEX_SUFFIX = ".offsets.npz"
#: Bytes before a record's data (length, length CRC) and after it (data CRC).
_HEADER, _FOOTER = 12, 4
_STAMP_BYTES = 64 * 1024


def index_path(shard: Path) -> Path:
    return shard.with_name(shard.name + INDEX_SUFFIX)


def shard_offsets(shard: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """(byte offset of each record's data, its length, whether the index had
    to be built now) for one shard, from the index beside it when it is
    current."""
    stamp = _stamp(shard)
    cached = index_path(shard)
    if cached.exists():
        try:
            with np.load(cached, allow_pickle=False) as saved:
                if saved["stamp"].tolist() == stamp:
                    return saved["offsets"], saved["lengths"], False
        except (OSError, ValueError, KeyError, zlib.error):
            pass  # unreadable or of another version: indexed again below
    offsets, lengths = _scan(shard)
    try:
        with atomic_path(cached) as tmp, tmp.open("wb") as handle:
            np.savez(handle, offsets=offsets, lengths=lengths, stamp=np.array(stamp, np.int64))
    except OSError:
        pass  # a read-only data folder: the offsets serve this run only
    return offsets, lengths, True


def _stamp(shard: Path) -> list[int]:
    """The shard's size and the CRC32 of its first and last 64 KiB."""
    size = shard.stat().st_size
    with shard.open("rb") as handle:
        head = handle.read(_STAMP_BYTES)
        handle.seek(max(0, size - _STAMP_BYTES))
        tail = handle.read(_STAMP_BYTES)
    return [size, zlib.crc32(head), zlib.crc32(tail)]


def _scan(shard: Path) -> tuple[np.ndarray, np.ndarray]:
    offsets, lengths = [], []
    descriptor = os.open(shard, os.O_RDONLY)
    try:
        size, position = os.fstat(descriptor).st_size, 0
        while position < size:
            header = os.pread(descriptor, 8, position)
            if len(header) < 8:
                break
            (length,) = struct.unpack("<Q", header)
            if position + _HEADER + length + _FOOTER > size:
                raise InputError(f"{shard}: truncated or corrupt TFRecord shard (a record runs past the end of the "
                                 f"file); delete it and its .summary.json and rerun tfrecord_generator.py")
            offsets.append(position + _HEADER)
            lengths.append(length)
            position += _HEADER + length + _FOOTER
    finally:
        os.close(descriptor)
    return np.array(offsets, np.int64), np.array(lengths, np.int64)


class RecordReader:
    """Reads records by global id with ``os.pread``; keeps at most
    ``MAX_OPEN`` shards open (a cohort may have thousands)."""

    MAX_OPEN = 64

    def __init__(self, files: list[Path], offsets: np.ndarray, lengths: np.ndarray, shard_of: np.ndarray) -> None:
        self.files, self.offsets, self.lengths, self.shard_of = files, offsets, lengths, shard_of
        self._open: OrderedDict[int, int] = OrderedDict()

    def read(self, gid: int) -> bytes:
        shard = int(self.shard_of[gid])
        descriptor = self._open.pop(shard, None)
        if descriptor is None:
            descriptor = os.open(self.files[shard], os.O_RDONLY)
            if len(self._open) >= self.MAX_OPEN:
                os.close(self._open.popitem(last=False)[1])
        self._open[shard] = descriptor
        return os.pread(descriptor, int(self.lengths[gid]), int(self.offsets[gid]))

    def close(self) -> None:
        for descriptor in self._open.values():
            os.close(descriptor)
        self._open.clear()

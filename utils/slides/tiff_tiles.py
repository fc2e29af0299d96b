"""Direct tile decoding for tiled TIFF-family slides (generic TIFF, SVS).

Block reads of a TIFF level need nothing more than the level's compressed
tiles, decoded by tifffile/imagecodecs (libjpeg-turbo for JPEG) and pasted into
place. Doing that directly, with a small cache of decoded tiles (neighbouring
blocks of the 10x and 2.5x scales share tiles), removes the per-call overhead
of the general readers and brings block reading close to the decode limit.
Levels that are not plain tiled 8-bit RGB (striped, planar, with alpha...) are
left to tiffslide by returning None.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from utils.common.errors import SlideError

#: Decoded tiles kept (a 256x256 RGB tile is 192 KiB, so about 48 MiB).
CACHE_TILES = 256


class TiffTiles:
    """Decoded-tile access to the levels of a tiled TIFF, thread-safe."""

    def __init__(self, path: str | Path, level_dimensions: list[tuple[int, int]]) -> None:
        import tifffile

        self._tif = tifffile.TiffFile(path)
        levels = self._tif.series[0].levels if self._tif.series else []
        self._pages = []
        for i, dimensions in enumerate(level_dimensions):
            page = levels[i].keyframe if i < len(levels) else None
            self._pages.append(page if page is not None and _usable(page, dimensions) else None)
        # Offsets, byte counts, JPEG tables and the decoder are loaded lazily by
        # tifffile, with seeks of their own: load them now, before any thread runs.
        self._layout = [(np.asarray(p.dataoffsets), np.asarray(p.databytecounts), p.jpegtables, p.decode)
                        if p is not None else None for p in self._pages]
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()

    def close(self) -> None:
        self._tif.close()

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray | None:
        """RGB pixels of a region inside ``level`` (level pixels), or None when the
        level cannot be decoded directly."""
        page = self._pages[level]
        if page is None:
            return None
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        out = np.empty((height, width, 3), np.uint8)
        for ty in range(y // th, (y + height - 1) // th + 1):
            for tx in range(x // tw, (x + width - 1) // tw + 1):
                tile = self._tile(level, page, ty * across + tx)
                x0, x1 = max(x, tx * tw), min(x + width, (tx + 1) * tw)
                y0, y1 = max(y, ty * th), min(y + height, (ty + 1) * th)
                if tile is None:
                    return None  # a missing (sparse) tile: let the general reader handle it
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw]
        return out

    def _tile(self, level: int, page, index: int) -> np.ndarray | None:
        key = (level, index)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        offsets, counts, jpegtables, decode = self._layout[level]
        offset, count = int(offsets[index]), int(counts[index])
        if not count:
            return None
        handle = self._tif.filehandle
        # tifffile's own file lock is a no-op unless configured: seek and read
        # must not interleave between threads, or a thread reads another tile.
        with self._file_lock:
            handle.seek(offset)
            data = handle.read(count)
        try:
            decoded, _, _ = decode(data, index, jpegtables=jpegtables)
            tile = np.ascontiguousarray(decoded.reshape(page.tilelength, page.tilewidth, -1)[..., :3])
        except Exception as exc:  # codecs raise their own types
            raise SlideError(f"{self._tif.filehandle.path}: tile {index} of level {level} cannot be decoded "
                             f"({exc}); the file is truncated or corrupt") from None
        with self._lock:
            self._cache[key] = tile
            while len(self._cache) > CACHE_TILES:
                self._cache.popitem(last=False)
        return tile


def _usable(page, dimensions: tuple[int, int]) -> bool:
    return (
        page.is_tiled
        and page.tiledepth == 1
        and page.dtype == np.uint8
        and page.samplesperpixel == 3
        and page.planarconfig == 1
        and (page.imagewidth, page.imagelength) == tuple(dimensions)
    )

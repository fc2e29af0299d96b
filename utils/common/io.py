"""Atomic outputs: a killed run leaves either a whole file or none.

Every output is written to a temporary name in the same directory and renamed
into place (``os.replace`` is atomic on POSIX), so a rerun can trust that any
file that exists is complete and skip the work behind it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """UTF-8 CSV through the csv module, so names with commas, quotes or any
    letters survive a round trip (read it back with :func:`read_csv`). A value
    that is not a number (NaN, infinity, None) is an empty cell."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_finite_or_none(value) for value in row] for row in rows)
    atomic_write_text(path, buffer.getvalue())


def write_table(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of metrics (dictionaries with the same keys) as CSV, floats to 4 decimals."""
    columns = list(rows[0])
    atomic_write_csv(path, columns,
                     ([round(row[c], 4) if isinstance(row[c], float) else row[c] for c in columns] for row in rows))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header line, as dictionaries."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def atomic_write_arrays(path: str | Path, arrays: Sequence[Any]) -> None:
    """A list of numpy arrays (weights, optimizer state) as an uncompressed ``.npz``, in order."""
    import numpy as np  # the light scripts import this module without numpy's start-up cost

    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **{f"v{k}": np.asarray(a) for k, a in enumerate(arrays)})


def read_arrays(path: str | Path) -> list[Any]:
    """The arrays :func:`atomic_write_arrays` wrote, in order."""
    import numpy as np

    with np.load(path, allow_pickle=False) as saved:
        return [saved[f"v{k}"] for k in range(len(saved.files))]


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Strict JSON: NaN and infinities (an F1 of a class absent from a set) are
    written as null, since other JSON readers refuse them."""
    text = json.dumps(json_safe(data), indent=2, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (also inside arrays) replaced by None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return _finite_or_none(value)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp(\.keras)?$")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed runs left under ``folder``.

    A temporary name carries its writer's process id; files of processes that
    are still running (another worker, another shard) are left alone.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.tmp*"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _running(int(match.group(1))):
            path.unlink()
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return pid != 0

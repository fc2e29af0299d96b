"""Outputs that know what made them.

Every per-slide output (a shard's summary, a map's summary) records
``made_with``: the settings that shaped it (resolved configuration, µm/px
override, model file hash, annotation file hash, flags). A rerun compares it
with what it would use now: equal means the slide is skipped as unchanged;
different means the old output is stale, and the run stops with one line
naming the difference unless ``--overwrite`` asks to redo it. Stale results
are never reported as done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from utils.common.errors import InputError
from utils.common.io import json_safe
from utils.slides.slide_files import SlideFile
from utils.tiles.summaries import SummaryFile

EARLIER_VERSION = "an earlier version that did not record its settings"
#: Status of a slide whose finished outputs were made with the same settings.
UNCHANGED = "skipped (unchanged)"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def normalised(made_with: Mapping[str, Any]) -> dict[str, Any]:
    """As it reads back from JSON, so that a fresh value compares equal to a saved one."""
    return json.loads(json.dumps(json_safe(dict(made_with))))


#: Configuration keys added after outputs began to record their settings, with
#: the value that earlier versions used without recording it: outputs made
#: by those versions are not stale for lack of the key.
IMPLIED_CONFIGURATION = {"background_class": "background"}


def difference(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str | None:
    """The first setting that differs, in words: "key old vs new this run"
    (nested keys joined by '.'); for a content digest, that the file
    changed, never the digests."""
    if old is None:
        return f"settings of {EARLIER_VERSION}"
    old = normalised(old)
    if isinstance(old.get("configuration"), dict):
        old["configuration"] = {**IMPLIED_CONFIGURATION, **old["configuration"]}
    return _first_difference(old, normalised(new), "")


def _first_difference(old: Any, new: Any, prefix: str) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        same_file = new.get("file") is not None and old.get("file") == new.get("file")
        if same_file and old.get("sha256") != new.get("sha256"):
            return f"{prefix.rstrip('.').replace('_', ' ')} file {new['file']} changed since"
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    if old == new:
        return None
    key = prefix.rstrip(".")
    if key.endswith("sha256"):
        return f"the {key.removesuffix('sha256').replace('_', ' ').strip('. ') or 'input'} differs in content"
    return f"{key} {_short(old)} vs {_short(new)} this run"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def read_made_with(summary: Path, kind: type[SummaryFile]) -> tuple[bool, dict[str, Any] | None]:
    """Whether a finished summary of ``kind`` exists, and the settings it
    recorded; one that cannot be read counts as none, so its outputs are redone."""
    try:
        made = kind.read(summary)
    except (OSError, ValueError, TypeError, KeyError):
        return False, None
    return made.done, made.made_with


def keep_previous(summary: Path, kind: type[SummaryFile], made_with: Mapping[str, Any], overwrite: bool,
                  what: str) -> bool:
    """Whether the finished outputs behind ``summary`` were made with
    ``made_with`` and can be kept, with or without ``overwrite``: redoing
    what nothing changed would only cost time. Outputs made otherwise raise
    :class:`InputError` naming the difference, unless ``overwrite`` asks to
    redo them (then, as with no finished outputs, False)."""
    done, previous = read_made_with(summary, kind)
    if not done:
        return False
    change = difference(previous, made_with)
    if not change:
        return True
    if overwrite:
        return False
    raise InputError(f"{what} was made with other settings ({change}); pass --overwrite to redo it")


def check_stale(slides: Sequence[SlideFile], summary_of: Callable[[SlideFile], Path], kind: type[SummaryFile],
                made_with: Callable[[SlideFile], dict[str, Any]], overwrite: bool, output: Path) -> None:
    """Stop before any work if finished outputs in ``output`` were made with
    other settings and ``--overwrite`` was not given: one line, naming the
    first such slide's difference and how many slides are concerned."""
    if overwrite:
        return
    stale = []
    for slide in slides:
        done, old = read_made_with(summary_of(slide), kind)
        if done:
            change = difference(old, made_with(slide))
            if change:
                stale.append((slide.name, change))
    if stale:
        name, change = stale[0]
        others = f" (and {len(stale) - 1} more slide(s))" if len(stale) > 1 else ""
        raise InputError(f"{output}: the outputs of {name}{others} were made with other settings ({change}); "
                         f"pass --overwrite to redo them, or choose another --output")

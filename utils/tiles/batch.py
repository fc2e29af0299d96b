"""Running one task per slide over a cohort: slide lists, shards, workers, failures.

Shared by extraction and inference: ``--slides`` accepts files and folders,
``--shard I/N`` keeps a deterministic 1/N of the sorted list (so a cluster
array job of N tasks covers a cohort without coordination), slides run in
worker processes that each open their own slide handle, and a slide that fails
is reported at the end while the others go on.
"""

from __future__ import annotations

import multiprocessing
import queue
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from utils.common.errors import InputError
from utils.common.failures import describe_os_error
from utils.common.log import debugging, info, note_on_stderr, progress
from utils.common.startup import import_tensorflow_quietly
from utils.slides.slide import MppOverride, parse_mpp
from utils.slides.slide_files import SlideFile, find_slides
from utils.tiles.provenance import UNCHANGED

Progress = Callable[[int], None]
SlideTask = Callable[[SlideFile, Progress], Any]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` with 0 <= I < N, e.g. ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), not {text!r}") from None
    if not 0 <= index < count:
        raise InputError(f"--shard {text}: need 0 <= I < N")
    return index, count


def expand_slides(paths: Sequence[str | Path]) -> list[SlideFile]:
    """Slides among the files and folders given (:func:`utils.slides.slide_files.find_slides`),
    sorted by name. None at all, or two with the same name (outputs are named
    by slide), is an error."""
    slides = find_slides(paths)
    if not slides:
        raise InputError(f"no slides in {', '.join(str(p) for p in paths)}: no file there is one OpenSlide "
                         f"recognises (.svs, .ndpi, .mrxs, .scn, .czi, .bif, a DICOM series, ...) or a TIFF")
    names = [s.name for s in slides]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"several slides share the name(s) {duplicates}; outputs are named by slide")
    return slides


def slides_to_process(paths: Sequence[str | Path], shard: str | None,
                      mpp: str | None) -> tuple[list[SlideFile], MppOverride]:
    """The slides of ``--slides`` in this task's ``--shard``, and ``--mpp``; an
    ``--mpp`` file row naming no slide of the cohort is a warning."""
    cohort = expand_slides(paths)
    override = parse_mpp(mpp)
    for name in override.unknown(s.name for s in cohort):
        warnings.warn(f"{override.file}: {name} is not among the slides")
    return take_shard(cohort, parse_shard(shard)), override


def take_shard(slides: Sequence[SlideFile], shard: tuple[int, int] | None) -> list[SlideFile]:
    """Share I of N of the sorted slides: every N-th, starting at I."""
    if shard is None:
        return list(slides)
    index, count = shard
    return list(slides[index::count])


@dataclass
class SlideOutcome:
    """A slide's summary (a :class:`~utils.tiles.summaries.ShardSummary` or
    :class:`~utils.tiles.summaries.MapSummary`, which both have a ``status``), or its error."""

    slide: SlideFile
    result: Any | None
    error: str | None


def _call(task: SlideTask, slide: SlideFile, updates: Any) -> SlideOutcome:
    def progress(n: int) -> None:
        updates.put(n)

    try:
        return SlideOutcome(slide, task(slide, progress), None)
    except InputError as exc:
        return SlideOutcome(slide, None, str(exc))
    except OSError as exc:
        return SlideOutcome(slide, None, f"{slide.path}: {describe_os_error(exc)}")
    except Exception as exc:
        if debugging():
            return SlideOutcome(slide, None, f"{slide.path}: unexpected error\n{traceback.format_exc()}")
        return SlideOutcome(slide, None, f"{slide.path}: unexpected error ({exc or 'no message'}); "
                                         f"rerun with --debug for the traceback")


def run_per_slide(task: SlideTask, slides: Sequence[SlideFile], workers: int, unit: str = "tiles") -> list[SlideOutcome]:
    """Run ``task(slide, progress)`` on every slide; ``workers`` > 1 uses spawned
    processes. Shows one bar for slides and one for ``unit`` done (per slide
    when slides run one after the other, in total across worker processes)."""
    outcomes: list[SlideOutcome] = []
    slide_bar = progress(total=len(slides), desc="slides", unit="slide", position=0)
    unit_bar = progress(desc=unit, unit=unit.rstrip("s") or unit, position=1, leave=False)

    def finish(outcome: SlideOutcome) -> None:
        outcomes.append(outcome)
        slide_bar.update(1)
        if outcome.error:
            note_on_stderr(f"error: {outcome.error}")  # as it happens, once: the closing line counts it

    if workers <= 1:
        for slide in slides:
            unit_bar.reset()  # one count and one rate per slide
            unit_bar.set_description(f"{slide.name} {unit}")
            finish(_call(task, slide, _Immediate(unit_bar)))
    else:
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context,
                                                                initializer=import_tensorflow_quietly) as pool:
            updates = manager.Queue()
            pending = {pool.submit(_call, task, slide, updates) for slide in slides}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(updates, unit_bar)
                for future in done:
                    finish(future.result())
            _drain(updates, unit_bar)
    slide_bar.close()
    unit_bar.close()
    return sorted(outcomes, key=lambda o: o.slide)


class _Immediate:
    """Queue stand-in that advances the bar directly when running in-process."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def put(self, n: int) -> None:
        self.bar.update(n)


def _drain(updates: Any, bar: Any) -> None:
    while True:
        try:
            bar.update(updates.get_nowait())
        except queue.Empty:
            return


def report(outcomes: Sequence[SlideOutcome]) -> int:
    """One line counting each outcome (each failure was printed as it
    happened); the exit status is 1 if any slide failed."""
    failed = [o for o in outcomes if o.error]
    statuses = Counter(o.result.status for o in outcomes if o.result)
    parts = [f"{statuses.pop('done', 0)} done", f"{statuses.pop(UNCHANGED, 0)} {UNCHANGED}"]
    parts += [f"{n} {status}" for status, n in sorted(statuses.items())]
    info(f"{len(outcomes)} slide(s): {', '.join(parts)}, {len(failed)} failed")
    return 1 if failed else 0

"""Shared fixtures: small synthetic slides with known regions, and the real
data folder beside the checkout (tests that need it skip when it is absent)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import tfrecord_generator
from utils.common.log import DEBUG_VARIABLE, QUIET_VARIABLE
from utils.common.setup import setup_process
from utils.tiles.synthetic import SyntheticRegion, make_slide, random_layout, rectangle

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TILE = 64
#: Tile size of the records that training tests share (:func:`tiles`).
RECORD_TILE = 32
#: The suite runs on two workers (pytest-xdist, pytest.ini). Tests that keep
#: both cores busy on their own (two replicas in one process, experiments of
#: two parallel runs) slow each other down threefold when they overlap, so
#: these run one after another on one worker (:func:`pytest_xdist_make_scheduler`).
BUSY_TESTS = ("tests/test_devices.py::", "tests/test_experiment.py::test_the_experiment_runs_every_stage",
              "tests/test_experiment.py::test_the_recipes_experiment_runs_every_stage")
#: A training run of a few seconds: small backbone, small head, few tiles.
FAST = ["--backbone", "small", "--backbone-weights", "none", "--head-units", "32", "--optimizer", "adam",
        "--learning-rate", "1e-3", "--epochs", "2", "--batch-size", "32", "--initial", "20", "--budget", "40",
        "--slide-class-cap", "60", "--eval-cap", "40"]


if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: TensorFlow in each worker, and in the scripts it
    # starts, computes an op on one thread rather than on one per core against
    # the other worker's threads (the suite: 689 s without, 654 s with).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")


def pytest_xdist_make_scheduler(config, log):
    """Tests spread one at a time over the workers as each frees up, except
    :data:`BUSY_TESTS`, which go together to one worker."""
    from xdist.scheduler import LoadScopeScheduling

    class BusyTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "busy" if nodeid.startswith(BUSY_TESTS) else nodeid

    return BusyTestsTogether(config, log)


@pytest.fixture(scope="session", autouse=True)
def process_settings() -> None:
    """The process-wide settings that each script's main makes (utils.common.setup),
    also for tests that call into utils directly."""
    setup_process()


@pytest.fixture(autouse=True)
def messages_as_set_by_each_test(monkeypatch) -> None:
    """A script run in-process with --quiet or --debug keeps its choice in the
    environment for the workers it starts (utils.common.log); the next test starts
    without it, whichever test ran before it."""
    for variable in (QUIET_VARIABLE, DEBUG_VARIABLE):
        monkeypatch.delenv(variable, raising=False)


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (see ../shared/data/README.md)")
    return path


def known_regions() -> list[SyntheticRegion]:
    """Rectangles whose edges sit 1/8 tile inside grid lines, so each edge tile
    is 7/8 or 1/8 covered: far from the 0.7 threshold on either side. Muscle is
    drawn before the stroma it overlaps and must still win (priority)."""
    t = TILE
    return [
        SyntheticRegion("muscle", "Muscle", rectangle(4 * t + 8, 2 * t + 8, 9 * t - 8, 7 * t - 8)),
        SyntheticRegion("stroma", "Lamina propria", rectangle(2 * t + 8, 2 * t + 8, 12 * t - 8, 12 * t - 8)),
        SyntheticRegion("urothelium", "Grade 2 High", rectangle(14 * t + 8, 1 * t + 8, 20 * t - 8, 6 * t - 8)),
        SyntheticRegion("blood", "Blood", rectangle(14 * t + 8, 9 * t + 8, 18 * t - 8, 13 * t - 8)),
        # Tissue touching the slide's bottom-right corner: its low-magnification
        # windows cross the edge and must be padded, not shifted.
        SyntheticRegion("damaged", "Cauterized", rectangle(21 * t + 8, 13 * t + 8, 24 * t, 16 * t)),
        SyntheticRegion("urothelium", "Unknown thing", rectangle(1 * t + 8, 14 * t + 8, 4 * t - 8, 16 * t - 8)),
    ]


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory) -> tuple[Path, Path]:
    """A 1536x1024 px pyramidal JPEG TIFF at 0.25 µm/px (levels 1, 4, 16)."""
    directory = tmp_path_factory.mktemp("synthetic")
    return make_slide(directory / "slides", "known", 24 * TILE, 16 * TILE, known_regions(),
                      annotations_dir=directory / "annotations")


@pytest.fixture(scope="session")
def tiles(tmp_path_factory) -> Path:
    """Four synthetic slides (in ``slides/`` beside the records) cut into
    32-px triplets, unlabelled tissue pooled."""
    root = tmp_path_factory.mktemp("training")
    for i in range(4):
        make_slide(root / "slides", f"slide{i}", 1024, 1024, random_layout(1024, 1024, i), seed=i,
                   annotations_dir=root / "annotations")
    assert tfrecord_generator.main(["--slides", str(root / "slides"), "--annotations", str(root / "annotations"),
                                    "--output", str(root / "tiles"), "--tile-size", str(RECORD_TILE),
                                    "--unlabeled"]) == 0
    return root / "tiles"


@pytest.fixture(scope="session")
def small_tiles(tmp_path_factory) -> Path:
    """One 768-px synthetic slide cut into 32-px triplets, every tissue tile
    kept: a few thousand windows, for jobs that read all of a folder."""
    root = tmp_path_factory.mktemp("small_tiles")
    make_slide(root / "slides", "only", 768, 768, random_layout(768, 768, 1), seed=5, annotations_dir=root / "ann")
    assert tfrecord_generator.main(["--slides", str(root / "slides"), "--annotations", str(root / "ann"),
                                    "--output", str(root / "tiles"), "--tile-size", str(RECORD_TILE),
                                    "--unlabeled"]) == 0
    return root / "tiles"


def wait_for(condition, timeout: float = 300.0) -> None:
    """Poll ``condition`` every 20 ms until it holds (for tests that kill a process part-way)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition never held")
        time.sleep(0.02)

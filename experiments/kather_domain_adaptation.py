#!/usr/bin/env python
"""Active learning versus full supervision under a domain shift, on real tissue.

The design of Fuster et al. (EUSIPCO 2023) on public tiles: Kather et al. 2016
colorectal H&E (8 classes, CC BY 4.0). Slides 01-04 and 10 form the source
lab; slides 05-09 the target lab, whose tiles are changed in one of two ways
(experiments/stain.py): ``stain``, another stain; ``stain_blur_jpeg``, the
same stain plus a softer scanner focus and JPEG at quality 60, the harder
shift. Then, through the project's own scripts:

1. tfrecord_generator.py --tiles cuts the source lab and both target labs
   (configuration experiments/kather.yaml: 8 classes, 64-px tiles, 4 per image);
2. active_learning_train.py trains the source model on the source lab;
3. its F1 on the target test split is the domain gap (round -1);
4. the fair ceiling: for every seed, the source model fine-tuned on 100% of
   the target pool as many times as an active-learning run is fine-tuned
   (so with at least its gradient steps), the model kept by validation F1;
5. strategies, from the same initial labelled set per seed (``--initial``
   tiles per class), until the whole pool is labelled.

The design (sized for 100 minutes on 2 CPU cores with ``--jobs 2``; measured, it takes
about 2.5 hours, most of it the full mode's 5 seeds):
- selection (harder shift, head mode, ``--selection-seeds``): every candidate
  strategy; the two with the best mean *validation* AULC go on, so the test
  split chooses nothing;
- harder shift, head mode, ``--seeds``: random, class_ratio (the paper's, by
  predicted classes) and the two chosen; class_ratio with the true pool labels
  (``class_ratio+oracle``, the original code's peeking) and the ceiling with
  ``--ceiling-seeds`` (the ceiling is a mean, not paired);
- harder shift, full mode, ``--full-seeds``: random, class_ratio, the two chosen;
- the first shift, head mode, ``--ceiling-seeds``: random, class_ratio, the two chosen.

A strategy name may carry ``+warm`` (``--warm-start``: class-balanced random
picks by predicted class until ``WARM_START`` of the pool is labelled) or
``+oracle`` (``--oracle-classes``). Images, not tiles, are split: the 4
records of an image always share a split. ``head`` mode freezes the source
backbone and fine-tunes the head on cached features; ``full`` fine-tunes
everything, as in the paper. The outputs are OUTPUT/results.md (the tables),
results.json, learning_curves.png, class_counts.png (labelled tiles per class
in the first rounds) and picks.png (the first picks on a t-SNE map of the
source features); runs stay in OUTPUT/<shift>/<mode>/, and
a rerun of the same command skips finished runs and resumes killed ones.

    python experiments/kather_domain_adaptation.py                  # about 2.5 hours on 2 CPU cores
    python experiments/kather_domain_adaptation.py --full-seeds 1   # about 1.2 hours
    python experiments/kather_domain_adaptation.py --quick          # about 15 minutes: does it still run?
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import analysis, anchor  # noqa: E402
from experiments.script_runs import run_script  # noqa: E402
from experiments.stain import gamma, resample, rotate_eosin, scan_again, shift_stains  # noqa: E402
from utils.common import plots  # noqa: E402
from utils.common.config import load_config  # noqa: E402
from utils.learning.active_learning import STRATEGIES  # noqa: E402
from utils.learning.run_files import RoundRow, SavedRound, finished, read_labelled, read_rounds  # noqa: E402
from utils.tiles.summaries import ShardSummary  # noqa: E402

KATHER = ROOT.parent / "shared" / "data" / "kather"
KATHER_MPP = 0.495
SOURCE_SLIDES = ("01", "02", "03", "04", "10")
TARGET_SLIDES = ("05", "06", "07", "08", "09")
#: Target lab: less haematoxylin, more eosin, a faint brown cast; the harder
#: one is also scanned with a softer focus (Gaussian sigma in px at 0.495 um/px)
#: and stored as JPEG.
STAIN_SCALE, STAIN_SHIFT = (0.6, 1.5, 1.0), (0.0, 0.0, 0.05)
HARD, EASY = "stain_blur_jpeg", "stain"
#: A third lab whose change the stain augmentation does not model: another
#: eosin dye (its vector turned by 15 degrees), a display gamma of 1.2 and a
#: scanner 1.5 times coarser.
UNMODELLED = "eosin_gamma_resolution"
#: Fractions of each domain's images per split (stratified by class).
SOURCE_SPLIT = {"train": 0.85, "val": 0.15}
TARGET_SPLIT = {"train": 0.5, "val": 0.1, "test": 0.4}
CEILING = "full_supervision"
BASELINES = ("random", "class_ratio")
ORACLE = "class_ratio+oracle"
#: The strategies the selection stage compares (the paper's class_ratio and random run anyway).
CANDIDATES = ("coreset", "badge", "typiclust", "diverse_entropy", "margin+warm")
#: Fraction of the pool labelled before a ``+warm`` strategy takes over: two head-mode rounds.
WARM_START = 0.1
#: Fine-tuning settings per mode: the head alone tolerates a larger step, and
#: a larger batch on cached features (which the validation curves of one seed
#: showed to learn as well as 32) costs a quarter of the steps.
MODE_FLAGS = {
    "head": ["--freeze-backbone", "--learning-rate", "1e-3", "--epochs", "40", "--patience", "5", "--batch-size", "128"],
    "full": ["--learning-rate", "2e-4", "--epochs", "5", "--patience", "2", "--batch-size", "32"],
}
#: ``--quick``: enough to show that every stage still runs, in about 15 minutes.
QUICK = {"images_per_class": 40, "selection_seeds": 1, "seeds": 2, "ceiling_seeds": 1, "full_seeds": 1,
         "candidates": ["typiclust", "margin+warm"], "budget": 0.2, "full_budget": 0.34}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None,
                        help="default experiment_output/kather, or experiment_output/kather_quick with --quick")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small version that checks that everything runs: {QUICK}")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES),
                        help=f"strategies the selection stage compares (default {' '.join(CANDIDATES)})")
    parser.add_argument("--selection-seeds", type=int, default=3, help="seeds of the selection stage (default 3)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per strategy, harder shift, head mode (default 10)")
    parser.add_argument("--ceiling-seeds", type=int, default=3,
                        help="seeds of the ceilings, of class_ratio+oracle and of the first shift (default 3)")
    parser.add_argument("--full-seeds", type=int, default=5, help="seeds per strategy in full mode (default 5)")
    parser.add_argument("--budget", type=float, default=0.05,
                        help="tiles per round in head mode, as a fraction of the pool (default 0.05)")
    parser.add_argument("--full-budget", type=float, default=0.2,
                        help="tiles per round in full mode, as a fraction of the pool (default 0.2)")
    add_lab_arguments(parser)
    args = parser.parse_args(argv)
    apply_quick(args, QUICK, "kather")
    for name in args.candidates:
        strategy_flags(name)  # an unknown name fails here, not after an hour
    return args


def apply_quick(args: argparse.Namespace, quick: dict, name: str) -> None:
    """With ``--quick``, the small settings ``quick``; the output folder
    experiment_output/<name> (or <name>_quick) unless ``--output`` is given."""
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    args.output = args.output or ROOT / "experiment_output" / (f"{name}_quick" if args.quick else name)


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the labs and their source model, which both experiments share."""
    parser.add_argument("--kather", type=Path, default=KATHER, help="the Kather class folders")
    parser.add_argument("--initial", type=int, default=5, help="initial labelled tiles per class (default 5)")
    parser.add_argument("--images-per-class", type=int, default=None,
                        help="use at most this many images per class and lab (default all)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    parser.add_argument("--backbone", default="small", help="backbone of the source model (default small)")
    parser.add_argument("--backbone-weights", default="none", help="for the source model (default none)")
    parser.add_argument("--head-units", default="256", help="units of the dense layers (default 256)")
    parser.add_argument("--tile-size", default="64", help="tile side in px (default 64: 4 tiles per image)")
    parser.add_argument("--source-learning-rate", default="1e-3",
                        help="Adam step for the source model (default 1e-3; 1e-4 from ImageNet weights)")
    parser.add_argument("--source-epochs", default="40", help="most epochs of the source model (default 40)")


def prepare_labs(args: argparse.Namespace, shifts: tuple[str, ...]) -> Path:
    """The output folder, with every lab staged, pictured and cut into records
    (each step skipped when done)."""
    if not args.kather.is_dir():
        sys.exit(f"error: {args.kather} is not a folder; pass --kather DIR (the Kather et al. 2016 class folders)")
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    domains = stage(args.kather, out / "staged", args.images_per_class, shifts)
    stain_examples(args.kather, out / "stain_examples.png", shifts)
    with ThreadPoolExecutor(args.jobs) as executor:
        list(executor.map(lambda domain: extract(args, out, domain), domains))
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    out = prepare_labs(args, (EASY, HARD))
    source_model = train_source_model(args, out)
    per_class = pool_class_counts(out / "records" / f"target_{HARD}", out / "staged" / "target_split.json")
    design = Design(args, out, source_model, per_class)
    chosen = design.select_strategies()
    print(f"chosen on validation AULC: {', '.join(chosen)}", flush=True)
    compared = [*BASELINES, *chosen]
    results: dict = {"selection": design.selection, "chosen": chosen, "shifts": {HARD: {}, EASY: {}}}
    results["shifts"][HARD]["head"] = design.run(HARD, "head", {**{s: args.seeds for s in compared},
                                                                ORACLE: args.ceiling_seeds})
    results["shifts"][HARD]["full"] = design.run(HARD, "full", {s: args.full_seeds for s in compared})
    results["shifts"][EASY]["head"] = design.run(EASY, "head", {s: args.ceiling_seeds for s in compared})
    minutes = (time.perf_counter() - started) / 60
    write_report(out, results, design.pool, minutes)
    print(f"\n{(out / 'results.md').read_text()}\nfigure: {out / 'learning_curves.png'}")


def strategy_flags(name: str) -> list[str]:
    """The training flags of a strategy name with its ``+warm`` / ``+oracle`` suffixes."""
    base, *suffixes = name.split("+")
    if base not in STRATEGIES or not set(suffixes) <= {"warm", "oracle"}:
        sys.exit(f"error: unknown strategy {name!r}: a name of {', '.join(STRATEGIES)}, with +warm or +oracle")
    return (["--strategy", base] + (["--warm-start", str(WARM_START)] if "warm" in suffixes else [])
            + (["--oracle-classes"] if "oracle" in suffixes else []))


class Design:
    """The runs of the experiment: which, with how many seeds, in parallel."""

    def __init__(self, args: argparse.Namespace, out: Path, source_model: Path, per_class: dict[str, int]) -> None:
        self.args, self.out, self.source_model = args, out, source_model
        self.pool = sum(per_class.values())
        self.initial = sum(min(args.initial, n) for n in per_class.values())
        self.selection: dict[str, float] = {}

    def rounds(self, mode: str) -> tuple[int, int]:
        """Tiles per round, and the rounds that label the pool after the initial set (no refit at 100%)."""
        budget = max(1, round((self.args.budget if mode == "head" else self.args.full_budget) * self.pool))
        return budget, math.ceil((self.pool - self.initial) / budget)

    def execute(self, shift: str, mode: str, seeds: dict[str, int]) -> None:
        budget, rounds = self.rounds(mode)
        jobs = [(shift, mode, strategy, seed) for seed in range(max(seeds.values()))
                for strategy, count in seeds.items() if seed < count]
        with ThreadPoolExecutor(self.args.jobs) as executor:
            list(executor.map(lambda job: target_run(self.args, self.out, self.source_model, budget, rounds, *job),
                              jobs))

    def select_strategies(self) -> list[str]:
        """The two candidates with the best mean validation AULC on the harder shift in head mode."""
        seeds = self.args.selection_seeds
        self.execute(HARD, "head", {s: seeds for s in (*BASELINES, *self.args.candidates)})
        for strategy in (*BASELINES, *self.args.candidates):
            curves = [read_curve(self.out / HARD / "head" / strategy / f"seed_{k}", self.pool, "val_macro_f1")[0]
                      for k in range(seeds)]
            self.selection[strategy] = float(np.mean([analysis.area_under_curve(c) for c in curves]))
        return best_candidates(self.selection, self.args.candidates)

    def run(self, shift: str, mode: str, seeds: dict[str, int]) -> dict:
        ceiling_seeds = min(self.args.ceiling_seeds, max(seeds.values()))
        self.execute(shift, mode, {CEILING: ceiling_seeds, **seeds})
        budget, rounds = self.rounds(mode)
        print(f"{shift} {mode}: target pool {self.pool} tiles, {budget} labelled per round, {rounds} rounds", flush=True)
        summary = summarise(self.out / shift / mode, seeds, ceiling_seeds, self.pool,
                            anchors=anchor_rows(self.out, shift, mode, "random", ceiling_seeds, self.pool,
                                                int(self.args.tile_size)))
        return {**summary, "budget": budget, "rounds": rounds}


def anchor_rows(out: Path, shift: str, mode: str, baseline: str, seeds: int, pool: int,
                tile_size: int) -> dict[str, list[analysis.Curve]]:
    """The anchors' test curves, fitted on the labelled sets of the first
    ``seeds`` ``baseline`` runs (random picks), named as table rows; their
    paired intervals use those seeds only."""
    runs = [out / shift / mode / baseline / f"seed_{k}" for k in range(seeds)]
    return {name + anchor.ROW_SUFFIX: curves["test"]
            for name, curves in anchor.curves_for(out, shift, runs, pool, tile_size).items()}


def best_candidates(selection: dict[str, float], candidates: list[str], count: int = 2) -> list[str]:
    """The ``count`` candidates of highest validation AULC, best first (ties in the order given)."""
    return sorted(candidates, key=lambda s: -selection[s])[:count]


# -- data -------------------------------------------------------------------------------
def stage(kather: Path, staged: Path, per_class: int | None, shifts: tuple[str, ...] = (EASY, HARD)) -> list[Path]:
    """Class folders per lab whose file names start with the split
    (``train__``, ``val__``, ``test__``): the source lab, and the target lab
    once per shift; and a split file per lab listing the resulting slide
    names (the target labs share their images and split)."""
    images = sorted(p for p in kather.glob("*/*") if p.suffix.lower() in {".png", ".tif", ".tiff", ".jpg"})
    if not images:
        sys.exit(f"error: no images in the class folders of {kather}")
    labs = [("source", SOURCE_SLIDES, SOURCE_SPLIT, None)] + \
        [(f"target_{shift}", TARGET_SLIDES, TARGET_SPLIT, shift) for shift in shifts]
    for lab, slides, fractions, shift in labs:
        done = staged / lab / "done.json"
        if done.exists():
            continue
        members = [p for p in images if re.search(r"CRC-Prim-HE-(\d+)", p.name).group(1) in slides]
        if per_class:
            members = [p for folder in sorted({p.parent for p in members})
                       for p in [m for m in members if m.parent == folder][:per_class]]
        assignment = stratified_split(members, fractions, seed=0)
        for path, split in assignment.items():
            dest = staged / lab / path.parent.name / f"{dest_slide(path, split)}__{path.stem}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
            if shift is not None:
                rgb = target_lab(rgb, shift)
            cv2.imwrite(str(dest), np.ascontiguousarray(rgb[..., ::-1]))
        names = {split: sorted({dest_slide(p, s) for p, s in assignment.items() if s == split}) for split in fractions}
        split_file = staged / f"{lab.split('_')[0]}_split.json"
        split_file.write_text(json.dumps({"test": [], **names}, indent=1))
        done.write_text("{}")
    return [staged / lab for lab, *_ in labs]


def restain(rgb: np.ndarray) -> np.ndarray:
    """A source image as stained by the target lab."""
    return shift_stains(rgb, STAIN_SCALE, STAIN_SHIFT)


#: Each target lab: how it makes an image of the source lab's tissue.
SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    EASY: restain,
    HARD: lambda rgb: scan_again(restain(rgb), 1.2, 60),
    UNMODELLED: lambda rgb: resample(gamma(rotate_eosin(rgb, 15.0), 1.2), 1.5),
}


def target_lab(rgb: np.ndarray, shift: str) -> np.ndarray:
    """A source image as the target lab of ``shift`` would have made it."""
    return SHIFTS[shift](rgb)


def stain_examples(kather: Path, path: Path, shifts: tuple[str, ...] = (EASY, HARD)) -> None:
    """One tile per class (top row), then the same tile in each target lab's
    scan, with the lab on the left and the class on top."""
    folders = sorted(p for p in kather.iterdir() if p.is_dir())
    config = load_config(ROOT / "experiments" / "kather.yaml")
    firsts = [cv2.imread(str(min(p for p in f.iterdir() if p.suffix.lower() == ".png")), cv2.IMREAD_COLOR)[..., ::-1]
              for f in folders]
    rows = {"source lab": firsts, **{f"target: {shift}": [target_lab(t, shift) for t in firsts] for shift in shifts}}
    fig = plots.Figure(figsize=(1.3 * len(folders) + 1.2, 1.45 * len(rows) + 0.3))
    axes = fig.subplots(len(rows), len(folders), squeeze=False)
    for r, (lab, tiles) in enumerate(rows.items()):
        for c, tile in enumerate(tiles):
            ax = axes[r][c]
            ax.imshow(tile)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(config.class_names[config.class_for_annotation(folders[c].name)], fontsize=9)
            if c == 0:
                ax.set_ylabel(lab.replace(": ", ":\n"), fontsize=8)
    fig.tight_layout()
    plots.save(fig, path, dpi=100)


def dest_slide(path: Path, split: str) -> str:
    """The slide name a staged image gets: its split, then its source slide."""
    return f"{split}__{re.search(r'CRC-Prim-HE-[0-9]+', path.name).group(0)}"


def stratified_split(paths: list[Path], fractions: dict[str, float], seed: int) -> dict[Path, str]:
    """Each class folder's images shuffled and cut by ``fractions``."""
    rng = np.random.default_rng(seed)
    assignment = {}
    for folder in sorted({p.parent for p in paths}):
        members = [p for p in paths if p.parent == folder]
        order = rng.permutation(len(members))
        edges = np.round(np.cumsum(list(fractions.values())) * len(members)).astype(int)
        for k, i in enumerate(order):
            assignment[members[i]] = list(fractions)[int(np.searchsorted(edges, k, side="right"))]
    return assignment


def pool_class_counts(records: Path, split_file: Path) -> dict[str, int]:
    """Labelled tiles per class in the training split: the pool of a simulated run."""
    train = set(json.loads(split_file.read_text())["train"])
    classes = load_config(ROOT / "experiments" / "kather.yaml").class_names
    counts = dict.fromkeys(classes, 0)
    for path in records.glob("*.summary.json"):
        summary = ShardSummary.read(path)
        if summary.slide in train:
            for name in classes:
                counts[name] += summary.tiles_per_class.get(name, 0)
    return counts


def pool_size(records: Path, split_file: Path) -> int:
    return sum(pool_class_counts(records, split_file).values())


# -- runs -------------------------------------------------------------------------------
def extract(args: argparse.Namespace, out: Path, domain: Path) -> None:
    """One lab's staged class folders into records (skipped when done)."""
    records = out / "records" / domain.name
    if (records / "done.json").exists():
        return
    run_script("tfrecord_generator.py", ["--tiles", str(domain), "--mpp", str(KATHER_MPP),
                                         "--slide-pattern", r"^([a-z]+__CRC-Prim-HE-\d+)__", "--output", str(records),
                                         "--config", str(ROOT / "experiments" / "kather.yaml"),
                                         "--tile-size", args.tile_size],
               out / "logs" / f"extract_{domain.name}.txt")
    (records / "done.json").write_text("{}")


def with_backbone(args: argparse.Namespace, backbone: str) -> argparse.Namespace:
    """The experiment's arguments with another backbone, for source models and runs of that backbone."""
    other = copy.copy(args)
    other.backbone = backbone
    return other


def train_source_model(args: argparse.Namespace, out: Path, name: str = "source_model",
                       extra: tuple[str, ...] = ()) -> Path:
    """The source-lab model (the paper's pre-trained network), trained from
    scratch into ``out/name``, with the training flags ``extra`` besides."""
    run = out / name
    if SavedRound.read(run) is None:
        run_script("active_learning_train.py", [
            "--data", str(out / "records" / "source"), "--output", str(run), "--resume",
            "--split", str(out / "staged" / "source_split.json"), "--rounds", "0", "--initial", "1000000",
            "--backbone", args.backbone, "--backbone-weights", args.backbone_weights,
            "--head-units", args.head_units, "--optimizer", "adam", "--learning-rate", args.source_learning_rate,
            "--epochs", args.source_epochs, "--patience", "6", "--batch-size", "32", "--slide-class-cap", "0",
            "--seed", "0", *extra,
        ], out / "logs" / f"{name}.txt")
    return run / "model.keras"


def growing_budgets(per_class: dict[str, int], initial: int, fractions: tuple[float, ...]) -> tuple[list[int], int]:
    """Per-round budgets that bring the labelled set from the initial tiles
    (``initial`` per class) to each of ``fractions`` of the pool, so that each
    is measured, not interpolated; and the number of rounds."""
    pool = sum(per_class.values())
    start = sum(min(initial, n) for n in per_class.values())
    targets = sorted({max(start + 1, round(f * pool)) for f in fractions})
    budgets = [int(b) for b in np.diff([start, *targets])]
    return budgets, len(budgets)


def target_run(args: argparse.Namespace, out: Path, source_model: Path, budget: int | list[int], rounds: int,
               shift: str, mode: str, strategy: str, seed: int, extra: tuple[str, ...] = (),
               name: str | None = None) -> None:
    """One fine-tuning run of ``strategy`` (or the ceiling) into
    ``out/shift/mode/name/seed_<seed>`` (``name``: the strategy's by default),
    with the training flags ``extra`` besides the mode's; ``budget``: tiles
    per round, or each round's (:func:`growing_budgets`); ``rounds`` -1
    scores the source model only. A run that has reached ``rounds`` is not
    started again."""
    run = out / shift / mode / (name or strategy) / f"seed_{seed}"
    if finished(run, rounds):
        return
    if strategy == CEILING:  # everything labelled from round 0, re-fitted every round
        schedule = ["--strategy", "random", "--initial", "1000000", "--budget", "0"]
    else:
        budgets = ["--budgets", *map(str, budget)] if isinstance(budget, list) else ["--budget", str(budget)]
        schedule = [*strategy_flags(strategy), "--initial", str(args.initial), *budgets]
    started = time.perf_counter()
    run_script("active_learning_train.py", [
        "--data", str(out / "records" / f"target_{shift}"), "--output", str(run), "--resume",
        "--split", str(out / "staged" / "target_split.json"), "--weights", str(source_model),
        "--backbone", args.backbone, "--backbone-weights", "none", "--head-units", args.head_units,
        "--rounds", str(rounds), *schedule, "--optimizer", "adam", "--no-figures",
        "--slide-class-cap", "0", "--seed", str(seed), "--mc-passes", "10", *MODE_FLAGS[mode], *extra,
    ], out / "logs" / shift / mode / f"{name or strategy}_seed_{seed}.txt")
    print(f"{shift} {mode} {name or strategy} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)


# -- results ----------------------------------------------------------------------------
def read_curve(run: Path, pool: int, column: str = "test_macro_f1") -> tuple[analysis.Curve, list[RoundRow]]:
    """A run's curve of ``column`` (a :class:`RoundRow` score) against the
    labelled fraction of the pool, and its rows."""
    rows = read_rounds(run, fitted_only=True)
    return (analysis.Curve(np.array([r.labelled / pool for r in rows]),
                           np.array([getattr(r, column) for r in rows])), rows)


def summarise(folder: Path, seeds: dict[str, int], ceiling_seeds: int, pool: int, baseline: str = "random",
              ceiling: str = CEILING, anchors: dict[str, list[analysis.Curve]] | None = None) -> dict:
    """The fair ceiling (the runs in ``folder/ceiling``), and per strategy the
    labels from which F1 stays within 1 point of it, the AULC with its paired
    interval against ``baseline`` (over the seeds both have), and the F1 at
    fixed fractions; the ``anchors``' test curves (experiments/anchor.py)
    are rows of the same table."""
    ceiling_f1, ceiling_steps, source_f1 = [], [], []
    for seed in range(ceiling_seeds):
        rows = read_rounds(folder / ceiling / f"seed_{seed}")
        kept = max((r for r in rows if r.round >= 0), key=lambda r: r.val_macro_f1)
        ceiling_f1.append(kept.test_macro_f1)
        ceiling_steps.append(sum(r.steps for r in rows))
        source_f1.append(rows[0].test_macro_f1)
    ceiling_mean = float(np.mean(ceiling_f1))
    curves = {s: [read_curve(folder / s / f"seed_{k}", pool) for k in range(n)] for s, n in seeds.items()}
    curves.update({name: [(curve, []) for curve in anchor_curves] for name, anchor_curves in (anchors or {}).items()})
    al_steps = max(sum(r.steps for r in rows) for runs in curves.values() for _, rows in runs)
    table = {}
    for strategy, runs in curves.items():
        stay = np.array([analysis.labels_to_stay(c, ceiling_mean - 0.01) for c, _ in runs])
        area = np.array([analysis.area_under_curve(c) for c, _ in runs])
        table[strategy] = {
            "stay_mean": float(np.nanmean(stay)) if (~np.isnan(stay)).any() else float("nan"),
            "stay_sd": float(np.nanstd(stay)) if (~np.isnan(stay)).any() else float("nan"),
            "stays": stay.tolist(), "stayed": int((~np.isnan(stay)).sum()), "seeds": len(runs),
            "aulc": float(area.mean()), "aulc_sd": float(area.std()), "areas": area.tolist(),
            **{f"f1_at_{int(p * 100)}": float(np.mean([analysis.f1_at(c, p) for c, _ in runs]))
               for p in (0.10, 0.25, 0.50)},
        }
    for strategy, entry in table.items():
        shared = min(entry["seeds"], table[baseline]["seeds"])
        entry["vs_random"] = analysis.paired_interval(np.array(entry["areas"][:shared]),
                                                      np.array(table[baseline]["areas"][:shared]))
    grid = np.linspace(0, 1, 101)
    means = {s: analysis.mean_curve([c for c, _ in runs], grid) for s, runs in curves.items()}
    return {"ceiling": ceiling_mean, "ceiling_sd": float(np.std(ceiling_f1)), "ceiling_seeds": ceiling_seeds,
            "ceiling_steps": float(np.mean(ceiling_steps)), "al_steps_max": al_steps,
            "source_f1": float(np.mean(source_f1)), "table": table, "grid": grid.tolist(),
            "curves": {s: [m.tolist(), sd.tolist()] for s, (m, sd) in means.items()}}


def write_report(out: Path, results: dict, pool: int, minutes: float) -> None:
    selection = results["selection"]
    lines = [f"Target pool {pool} tiles; wall time of the whole experiment {minutes:.0f} min.", "",
             "Selection (harder shift, head mode): mean validation AULC "
             + ", ".join(f"{s} {v:.3f}" for s, v in sorted(selection.items(), key=lambda kv: -kv[1]))
             + f"; chosen: {', '.join(results['chosen'])}.", ""]
    for shift, modes in results["shifts"].items():
        for mode, r in modes.items():
            rounds = r["rounds"]
            lines += [
                f"### {shift}, {mode}: {'frozen source backbone, head fine-tuned' if mode == 'head' else 'whole network fine-tuned'}"
                f" ({r['budget']} tiles per round, {rounds} rounds)", "",
                f"Source model on the target test split: macro F1 {r['source_f1']:.3f}. "
                f"Fair ceiling ({r['ceiling_seeds']} seeds; 100% of the pool, {rounds + 1} successive fine-tunes, "
                f"{r['ceiling_steps']:.0f} gradient steps against at most {r['al_steps_max']} for an active-learning "
                f"run; model kept by validation F1): {r['ceiling']:.3f} ± {r['ceiling_sd']:.3f}.", "",
                *table_lines(r["table"], "random"), "",
            ]
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "learning_curves.png")
    hard_head = {s: e for s, e in results["shifts"][HARD]["head"]["table"].items()
                 if not s.endswith(anchor.ROW_SUFFIX)}
    class_counts_plot(out / HARD / "head", {s: e["seeds"] for s, e in hard_head.items()}, out / "class_counts.png")
    picks_plot(out, [s for s in hard_head if s != ORACLE], out / "picks.png")


def table_lines(table: dict, baseline: str, what: str = "strategy") -> list[str]:
    """A markdown table of :func:`summarise`'s per-run entries, best AULC first,
    with each one's paired AULC difference from ``baseline``."""
    lines = [f"| {what} | seeds | labels from which F1 stays ≥ ceiling − 1 pt | seeds that stay | AULC "
             f"| AULC − {baseline} (95% CI) | F1 @10% | F1 @25% | F1 @50% |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, e in sorted(table.items(), key=lambda kv: -kv[1]["aulc"]):
        stay = "never" if math.isnan(e["stay_mean"]) else f"{e['stay_mean']:.0%} ± {e['stay_sd']:.0%}"
        diff = "—" if name == baseline else paired_difference(*e["vs_random"])
        lines.append(f"| {name} | {e['seeds']} | {stay} | {e['stayed']}/{e['seeds']} "
                     f"| {e['aulc']:.3f} ± {e['aulc_sd']:.3f} | {diff} | {e['f1_at_10']:.3f} "
                     f"| {e['f1_at_25']:.3f} | {e['f1_at_50']:.3f} |")
    return lines


def paired_difference(mean: float, low: float, high: float) -> str:
    """``+0.004 (-0.010, +0.018)``; one seed has no interval, and says so."""
    interval = "one seed, no interval" if math.isnan(low) else f"{low:+.3f}, {high:+.3f}"
    return f"{mean:+.3f} ({interval})"


def plot(results: dict, path: Path, baseline: str = "random") -> None:
    """Mean learning curves per lab and mode, ``baseline`` in black."""
    panels = [(shift, mode, r) for shift, modes in results["shifts"].items() for mode, r in modes.items()]
    fig = plots.Figure(figsize=(6.2 * len(panels), 4.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (shift, mode, r) in zip(axes[0], panels):
        grid = np.array(r["grid"])
        for strategy, (mean, sd) in r["curves"].items():
            mean, sd = np.array(mean, float), np.array(sd, float)
            line, = ax.plot(grid * 100, mean, label=f"{strategy} ({r['table'][strategy]['seeds']})",
                            lw=2.4 if strategy == baseline else 1.6, color="black" if strategy == baseline else None,
                            ls="--" if strategy.endswith(anchor.ROW_SUFFIX) else "-")
            ax.fill_between(grid * 100, mean - sd, mean + sd, color=line.get_color(), alpha=0.12, lw=0)
        ax.axhspan(r["ceiling"] - 0.01, r["ceiling"], color="tab:green", alpha=0.25,
                   label=f"fair ceiling − 1 pt ({r['ceiling']:.3f})")
        ax.axhline(r["source_f1"], color="grey", ls=":", label=f"source model ({r['source_f1']:.3f})")
        ax.axvline(59, color="grey", ls="--", lw=0.8, label="the paper's 59%")
        ax.set_xlabel("target pool labelled (%)")
        ax.set_ylabel("test macro F1")
        ax.set_title(f"{shift}, {mode} fine-tuning: mean ± sd over (seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    plots.save(fig, path, dpi=100)


def class_counts_plot(folder: Path, seeds: dict[str, int], path: Path, rounds: int = 6) -> None:
    """What each strategy labelled in its first rounds: the mean labelled tiles
    per class over seeds, one panel per strategy."""
    fig = plots.Figure(figsize=(3.1 * len(seeds), 3.4))
    axes = fig.subplots(1, len(seeds), squeeze=False, sharey=True)
    names = load_config(ROOT / "experiments" / "kather.yaml").class_names
    for ax, (strategy, count) in zip(axes[0], seeds.items()):
        runs = [[r for r in read_rounds(folder / strategy / f"seed_{k}", fitted_only=True) if r.round < rounds]
                for k in range(count)]
        labelled = np.mean([[r.labelled for r in rows] for rows in runs], axis=0)
        for name in names:
            ax.plot(labelled, np.mean([[r.labelled_per_class[name] for r in rows] for rows in runs], axis=0),
                    marker=".", label=name)
        ax.set_title(f"{strategy} ({count} seeds)", fontsize=9)
        ax.set_xlabel("labelled tiles")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("labelled tiles of the class")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, path, dpi=100)


def picks_plot(out: Path, strategies: list[str], path: Path, rounds: int = 3, seed: int = 0) -> None:
    """Where each strategy's first ``rounds`` picks (harder shift, head mode,
    one seed) fall among the target pool, on a t-SNE map of the source
    backbone's pooled features: the space that head mode keeps frozen and
    that coreset and typiclust cluster. The pool is coloured by true class."""
    # TensorFlow only here, after the runs: the process that launches them stays light.
    from matplotlib.lines import Line2D
    from sklearn.manifold import TSNE

    from utils.learning.learners import predict
    from utils.network.model import Predictor, load_model
    from utils.tiles.records import read_index, record_files, triplet_dataset

    config = load_config(ROOT / "experiments" / "kather.yaml")
    index = read_index(record_files(out / "records" / f"target_{HARD}"))
    train = json.loads((out / "staged" / "target_split.json").read_text())["train"]
    ids = np.flatnonzero(np.isin(index.slide, train) & (index.label >= 0))
    scales = ShardSummary.read(next((out / "records" / f"target_{HARD}").glob("*.summary.json"))).scales
    dataset = triplet_dataset(index, ids, scales, 128, with_ids=True)
    features = predict(Predictor(load_model(out / "source_model" / "model.keras")), dataset, embeddings=True)
    xy = TSNE(2, init="pca", random_state=0).fit_transform(features["embeddings"])
    where = {(index.slide[i], int(index.x[i]), int(index.y[i])): k for k, i in enumerate(features["ids"])}
    labels = features["labels"]
    colours = np.array([c["color"] for c in config.classes])
    fig = plots.Figure(figsize=(3.4 * len(strategies), 3.9))
    axes = fig.subplots(1, len(strategies), squeeze=False)
    for ax, strategy in zip(axes[0], strategies):
        chosen = np.array(sorted(where[(tile.slide, tile.x, tile.y)]
                                 for tile in read_labelled(out / HARD / "head" / strategy / f"seed_{seed}")
                                 if 1 <= tile.round <= rounds), int)
        ax.scatter(xy[:, 0], xy[:, 1], s=3, c=colours[labels], alpha=0.25, lw=0)
        ax.scatter(xy[chosen, 0], xy[chosen, 1], s=16, c=colours[labels[chosen]], edgecolors="black", lw=0.5)
        ax.set_title(f"{strategy}: rounds 1-{rounds} ({len(chosen)} tiles)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=name)
               for c, name in enumerate(config.class_names)]
    fig.suptitle(f"Picks (outlined) among the target pool (faint), seed {seed}, coloured by true class", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles), frameon=False)
    plots.save(fig, path, dpi=100)


if __name__ == "__main__":
    main()

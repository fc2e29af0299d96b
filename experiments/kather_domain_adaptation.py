#!/usr/bin/env python
"""Active learning versus full supervision under a domain shift, on real tissue.

The design of Fuster et al. (EUSIPCO 2023) on public tiles: Kather et al. 2016
colorectal H&E (8 classes, CC BY 4.0). Slides 01-04 and 10 form the source
lab; slides 05-09 the target lab, whose tiles also get a different stain
(experiments/stain.py). Then, through the project's own scripts:

1. tfrecord_generator.py --tiles cuts both domains (configuration
   experiments/kather.yaml: the 8 classes, 64-px tiles at 20x, 4 per image);
2. active_learning_train.py trains the source model on the source lab;
3. its F1 on the target test split is the domain gap (round -1);
4. the fair ceiling: for every seed, the source model fine-tuned on 100% of
   the target pool as many times as an active-learning run is fine-tuned
   (so with at least its gradient steps), the model kept by validation F1;
5. every strategy, for every seed, from the same initial labelled set
   (``--initial`` tiles per class) until the whole pool is labelled.

Images, not tiles, are split: the 4 records of an image always share a split.
Two training modes: ``head`` (frozen source backbone, cached features, only
the head fine-tuned: cheap enough for many seeds) and ``full`` (everything
fine-tuned, as in the paper). The outputs are OUTPUT/results.md (the table),
results.json and learning_curves.png; the runs stay in OUTPUT/<mode>/, and
a rerun of the same command skips finished runs and resumes killed ones.

    python experiments/kather_domain_adaptation.py                     # about an hour on 2 CPU cores
    python experiments/kather_domain_adaptation.py --modes head --seeds 10
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import analysis  # noqa: E402
from experiments.stain import shift_stains  # noqa: E402
from utils import plots  # noqa: E402
from utils.training import read_rounds  # noqa: E402

KATHER = ROOT.parent / "shared" / "data" / "kather"
KATHER_MPP = 0.495
SOURCE_SLIDES = ("01", "02", "03", "04", "10")
TARGET_SLIDES = ("05", "06", "07", "08", "09")
#: Target lab: less haematoxylin, more eosin, a faint brown cast.
STAIN_SCALE, STAIN_SHIFT = (0.6, 1.5, 1.0), (0.0, 0.0, 0.05)
#: Fractions of each domain's images per split (stratified by class).
SOURCE_SPLIT = {"train": 0.85, "val": 0.15}
TARGET_SPLIT = {"train": 0.5, "val": 0.1, "test": 0.4}
STRATEGIES = ("class_ratio", "class_ratio_uncertainty", "entropy", "margin", "least_confidence", "bald", "random")
CEILING = "full_supervision"
#: Fine-tuning settings per mode: the head alone tolerates a larger step.
MODE_FLAGS = {
    "head": ["--freeze-backbone", "--learning-rate", "1e-3", "--epochs", "30", "--patience", "5"],
    "full": ["--learning-rate", "2e-4", "--epochs", "8", "--patience", "2"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kather", type=Path, default=KATHER, help="the Kather class folders")
    parser.add_argument("--output", type=Path, default=ROOT / "experiment_output" / "kather")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODE_FLAGS), default=["head", "full"])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per strategy in head mode (default 5)")
    parser.add_argument("--full-seeds", type=int, default=3, help="seeds per strategy in full mode (default 3)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--initial", type=int, default=5, help="initial labelled tiles per class (default 5)")
    parser.add_argument("--budget", type=float, default=0.05,
                        help="tiles per round in head mode, as a fraction of the pool (default 0.05)")
    parser.add_argument("--full-budget", type=float, default=0.1,
                        help="tiles per round in full mode, as a fraction of the pool (default 0.1)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    parser.add_argument("--backbone", default="small", help="backbone of the source model (default small)")
    parser.add_argument("--backbone-weights", default="none", help="for the source model (default none)")
    parser.add_argument("--head-units", default="256", help="units of the dense layers (default 256)")
    parser.add_argument("--tile-size", default="64", help="tile side in px (default 64: 4 tiles per image)")
    parser.add_argument("--source-learning-rate", default="1e-3",
                        help="Adam step for the source model (default 1e-3; 1e-4 from ImageNet weights)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.kather.is_dir():
        sys.exit(f"error: {args.kather} is not a folder; pass --kather DIR (the Kather et al. 2016 class folders)")
    started = time.perf_counter()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    source, target = stage(args.kather, out / "staged")
    stain_examples(args.kather, out / "stain_examples.png")
    common = ["--config", str(ROOT / "experiments" / "kather.yaml"), "--tile-size", args.tile_size]
    for domain in (source, target):
        run_script("tfrecord_generator.py", ["--tiles", str(domain), "--mpp", str(KATHER_MPP),
                                             "--slide-pattern", r"^([a-z]+__CRC-Prim-HE-\d+)__",
                                             "--output", str(out / "records" / domain.name), *common],
                   out / "logs" / f"extract_{domain.name}.txt")
    source_model = train_source_model(args, out)
    pool = pool_size(out / "records" / "target", out / "staged" / "target_split.json")
    results = {}
    for mode in args.modes:
        budget = max(1, round((args.budget if mode == "head" else args.full_budget) * pool))
        rounds = math.ceil(pool / budget)
        print(f"{mode}: target pool {pool} tiles, {budget} labelled per round, {rounds} rounds", flush=True)
        seeds = range(args.seeds if mode == "head" else args.full_seeds)
        jobs = [(mode, strategy, seed) for seed in seeds for strategy in (CEILING, *args.strategies)]
        with ThreadPoolExecutor(args.jobs) as executor:
            list(executor.map(lambda job: target_run(args, out, source_model, budget, rounds, *job), jobs))
        results[mode] = {**summarise(out / mode, args.strategies, seeds, pool), "budget": budget, "rounds": rounds}
    minutes = (time.perf_counter() - started) / 60
    write_report(out, results, pool, minutes)
    print(f"\n{(out / 'results.md').read_text()}\nfigure: {out / 'learning_curves.png'}")


# -- data -------------------------------------------------------------------------------
def stage(kather: Path, staged: Path) -> tuple[Path, Path]:
    """Class folders per domain whose file names start with the split
    (``train__``, ``val__``, ``test__``), the target ones re-stained; and a split
    file per domain listing the resulting slide names."""
    images = sorted(p for p in kather.glob("*/*") if p.suffix.lower() in {".png", ".tif", ".tiff", ".jpg"})
    if not images:
        sys.exit(f"error: no images in the class folders of {kather}")
    done = staged / "done.json"
    if done.exists():
        return staged / "source", staged / "target"
    for domain, slides, fractions in (("source", SOURCE_SLIDES, SOURCE_SPLIT), ("target", TARGET_SLIDES, TARGET_SPLIT)):
        members = [p for p in images if re.search(r"CRC-Prim-HE-(\d+)", p.name).group(1) in slides]
        assignment = stratified_split(members, fractions, seed=0)
        for path, split in assignment.items():
            dest = staged / domain / path.parent.name / f"{dest_slide(path, split)}__{path.stem}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
            if domain == "target":
                rgb = shift_stains(rgb, STAIN_SCALE, STAIN_SHIFT)
            cv2.imwrite(str(dest), np.ascontiguousarray(rgb[..., ::-1]))
        names = {split: sorted({dest_slide(p, s) for p, s in assignment.items() if s == split}) for split in fractions}
        (staged / f"{domain}_split.json").write_text(json.dumps({"test": [], **names}, indent=1))
    done.write_text("{}")
    return staged / "source", staged / "target"


def stain_examples(kather: Path, path: Path) -> None:
    """One tile per class (top) and the same tile in the target lab's stain (bottom)."""
    tops, bottoms = [], []
    for folder in sorted(p for p in kather.iterdir() if p.is_dir()):
        first = min(p for p in folder.iterdir() if p.suffix.lower() == ".png")
        rgb = cv2.imread(str(first), cv2.IMREAD_COLOR)[..., ::-1]
        tops.append(rgb)
        bottoms.append(shift_stains(rgb, STAIN_SCALE, STAIN_SHIFT))
    rows = [np.hstack([np.pad(t, ((0, 4), (0, 4), (0, 0)), constant_values=255) for t in r]) for r in (tops, bottoms)]
    cv2.imwrite(str(path), np.ascontiguousarray(np.vstack(rows)[..., ::-1]))


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


def pool_size(records: Path, split_file: Path) -> int:
    train = set(json.loads(split_file.read_text())["train"])
    return sum(json.loads(p.read_text())["tiles"] for p in records.glob("*.summary.json")
               if json.loads(p.read_text())["slide"] in train)


# -- runs -------------------------------------------------------------------------------
def run_script(script: str, argv: list[str], log: Path) -> None:
    """One of the project's scripts in a fresh process, its output in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        code = subprocess.call([sys.executable, str(ROOT / script), *argv], stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"error: {script} failed (exit {code}); see {log}")


def train_source_model(args: argparse.Namespace, out: Path) -> Path:
    """The source-lab model (the paper's pre-trained network), trained from scratch."""
    run = out / "source_model"
    if not (run / "state.json").exists():
        run_script("active_learning_train.py", [
            "--data", str(out / "records" / "source"), "--output", str(run), "--resume",
            "--split", str(out / "staged" / "source_split.json"), "--rounds", "0", "--initial", "1000000",
            "--backbone", args.backbone, "--backbone-weights", args.backbone_weights,
            "--head-units", args.head_units, "--optimizer", "adam", "--learning-rate", args.source_learning_rate,
            "--epochs", "40", "--patience", "6", "--batch-size", "32", "--slide-class-cap", "0", "--seed", "0",
        ], out / "logs" / "source_model.txt")
    return run / "model.keras"


def target_run(args: argparse.Namespace, out: Path, source_model: Path, budget: int, rounds: int,
               mode: str, strategy: str, seed: int) -> None:
    run = out / mode / strategy / f"seed_{seed}"
    state = run / "state.json"
    if state.exists() and json.loads(state.read_text())["round"] == rounds:
        return
    if strategy == CEILING:  # everything labelled from round 0, re-fitted every round
        schedule = ["--strategy", "random", "--initial", "1000000", "--budget", "0"]
    else:
        schedule = ["--strategy", strategy, "--initial", str(args.initial), "--budget", str(budget)]
    started = time.perf_counter()
    run_script("active_learning_train.py", [
        "--data", str(out / "records" / "target"), "--output", str(run), "--resume",
        "--split", str(out / "staged" / "target_split.json"), "--weights", str(source_model),
        "--backbone", args.backbone, "--backbone-weights", "none", "--head-units", args.head_units,
        "--rounds", str(rounds), *schedule, "--optimizer", "adam", "--batch-size", "32",
        "--slide-class-cap", "0", "--seed", str(seed), "--mc-passes", "10", *MODE_FLAGS[mode],
    ], out / "logs" / mode / f"{strategy}_seed_{seed}.txt")
    print(f"{mode} {strategy} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)


# -- results ----------------------------------------------------------------------------
def read_curve(run: Path, pool: int) -> tuple[analysis.Curve, list[dict[str, str]]]:
    rows = [r for r in read_rounds(run / "rounds.csv") if int(r["round"]) >= 0]
    return (analysis.Curve(np.array([int(r["labelled"]) / pool for r in rows]),
                           np.array([float(r["test_macro_f1"]) for r in rows])), rows)


def summarise(folder: Path, strategies: list[str], seeds: range, pool: int) -> dict:
    ceiling_f1, ceiling_steps, source_f1 = [], [], []
    for seed in seeds:
        rows = read_rounds(folder / CEILING / f"seed_{seed}" / "rounds.csv")
        kept = max((r for r in rows if int(r["round"]) >= 0), key=lambda r: float(r["val_macro_f1"]))
        ceiling_f1.append(float(kept["test_macro_f1"]))
        ceiling_steps.append(sum(int(r["steps"]) for r in rows))
        source_f1.append(float(rows[0]["test_macro_f1"]))
    ceiling = float(np.mean(ceiling_f1))
    curves = {s: [read_curve(folder / s / f"seed_{seed}", pool) for seed in seeds] for s in strategies}
    al_steps = max(sum(int(r["steps"]) for r in rows) for runs in curves.values() for _, rows in runs)
    table = {}
    for strategy, runs in curves.items():
        reach = np.array([analysis.labels_to_reach(c, ceiling - 0.01) for c, _ in runs])
        area = np.array([analysis.area_under_curve(c) for c, _ in runs])
        table[strategy] = {
            "reach_mean": float(np.nanmean(reach)) if (~np.isnan(reach)).any() else float("nan"),
            "reach_sd": float(np.nanstd(reach)) if (~np.isnan(reach)).any() else float("nan"),
            "reached": int((~np.isnan(reach)).sum()), "seeds": len(runs),
            "aulc": float(area.mean()), "aulc_sd": float(area.std()), "areas": area.tolist(),
            **{f"f1_at_{int(p * 100)}": float(np.mean([analysis.f1_at(c, p) for c, _ in runs]))
               for p in (0.10, 0.25, 0.50)},
        }
    if "random" in table:
        for strategy, entry in table.items():
            entry["vs_random"] = analysis.paired_interval(np.array(entry["areas"]), np.array(table["random"]["areas"]))
    grid = np.linspace(0, 1, 101)
    means = {s: analysis.mean_curve([c for c, _ in runs], grid) for s, runs in curves.items()}
    return {"ceiling": ceiling, "ceiling_sd": float(np.std(ceiling_f1)), "ceiling_steps": float(np.mean(ceiling_steps)),
            "al_steps_max": al_steps, "source_f1": float(np.mean(source_f1)), "seeds": len(seeds),
            "table": table, "grid": grid.tolist(),
            "curves": {s: [m.tolist(), sd.tolist()] for s, (m, sd) in means.items()}}


def write_report(out: Path, results: dict, pool: int, minutes: float) -> None:
    lines = [f"Target pool {pool} tiles; wall time of the whole experiment {minutes:.0f} min.", ""]
    for mode, r in results.items():
        rounds = r["rounds"]
        lines += [
            f"### {mode}: {'frozen source backbone, head fine-tuned' if mode == 'head' else 'whole network fine-tuned'}"
            f" ({r['seeds']} seeds, {r['budget']} tiles per round, {rounds} rounds)", "",
            f"Source model on the target test split: macro F1 {r['source_f1']:.3f}. "
            f"Fair ceiling (100% of the pool, {rounds + 1} successive fine-tunes, {r['ceiling_steps']:.0f} gradient "
            f"steps against at most {r['al_steps_max']} for an active-learning run; model kept by validation F1): "
            f"{r['ceiling']:.3f} ± {r['ceiling_sd']:.3f}.", "",
            "| strategy | labels to reach ceiling − 1 pt | seeds reaching | AULC | AULC − random (95% CI) "
            "| F1 @10% | F1 @25% | F1 @50% |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for strategy, e in sorted(r["table"].items(), key=lambda kv: -kv[1]["aulc"]):
            reach = "never" if math.isnan(e["reach_mean"]) else f"{e['reach_mean']:.0%} ± {e['reach_sd']:.0%}"
            diff = "—" if strategy == "random" or "vs_random" not in e else \
                "{:+.3f} ({:+.3f}, {:+.3f})".format(*e["vs_random"])
            lines.append(f"| {strategy} | {reach} | {e['reached']}/{e['seeds']} | {e['aulc']:.3f} ± {e['aulc_sd']:.3f} "
                         f"| {diff} | {e['f1_at_10']:.3f} | {e['f1_at_25']:.3f} | {e['f1_at_50']:.3f} |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "learning_curves.png")


def plot(results: dict, path: Path) -> None:
    fig = plots.Figure(figsize=(6.5 * len(results), 4.8))
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, (mode, r) in zip(axes[0], results.items()):
        grid = np.array(r["grid"])
        for strategy, (mean, sd) in r["curves"].items():
            mean, sd = np.array(mean, float), np.array(sd, float)
            line, = ax.plot(grid * 100, mean, label=strategy, lw=1.6 if strategy != "random" else 2.4,
                            color="black" if strategy == "random" else None)
            ax.fill_between(grid * 100, mean - sd, mean + sd, color=line.get_color(), alpha=0.12, lw=0)
        ax.axhspan(r["ceiling"] - 0.01, r["ceiling"], color="tab:green", alpha=0.25,
                   label=f"fair ceiling − 1 pt ({r['ceiling']:.3f})")
        ax.axhline(r["source_f1"], color="grey", ls=":", label=f"source model ({r['source_f1']:.3f})")
        ax.axvline(59, color="grey", ls="--", lw=0.8, label="the paper's 59%")
        ax.set_xlabel("target pool labelled (%)")
        ax.set_ylabel("test macro F1")
        ax.set_title(f"{mode} fine-tuning, mean ± sd over {r['seeds']} seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    plots.save(fig, path, dpi=110)


if __name__ == "__main__":
    main()

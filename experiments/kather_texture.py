#!/usr/bin/env python
"""The texture backbone against what a pathologist already has, on real tissue.

The anchor (experiments/anchor.py) is QuPath's way: a random forest on
multi-scale filter statistics, trained on the new lab's labels. This
experiment puts the project's ``--backbone texture`` (the same filter bank as
Keras layers, with the paper's head, in head mode) beside it on the labs,
splits and scripts of experiments/kather_domain_adaptation.py, the two
target labs of the recipes (``stain_blur_jpeg``, the harder shift, and
``eosin_gamma_resolution``, the lab no augmentation models):

- **texture, no source**: the network built on the target lab alone (its
  standardisation from the target pool), as the forest is;
- **texture, source**: fine-tuned from a source model trained on the source
  lab, one source model per seed (so the intervals include the source
  model's variance), its standardisation re-estimated on the target pool
  (``--adapt-bn``);

- **texture+simclr, no source** and **simclr, no source**: the filter bank
  beside a small CNN pretrained without labels by ``--self-supervised
  simclr`` on the source lab and this lab's pool (never its validation or
  test images), and that CNN alone, in head mode on the target lab;
- **small CNN, source**: the same small CNN trained with labels on the
  source lab instead (one per seed, the whole network, as the recipes'
  source model), frozen, in head mode on the target lab: what SimCLR's
  pretraining without labels must beat;

each with ``random`` and ``margin+warm`` picks. Each round refits the head
from its weights before round 0 for 60 epochs and keeps the last
(``--head-from start --patience 0``); ``--head-recipe early`` fits it as
before, from the previous round's head with early stopping on the
validation loss. Budgets grow so that every
reported fraction is measured, none interpolated: 4 tiles per class to start
(1.6% of the Kather pool), then 2, 5, 10, 20, 50 and 100% of the pool. The
anchors are fitted on exactly the tiles the ``random`` run of the same seed
had labelled after each round: forest on target labels, forest on source +
target labels, and logistic regression.

    python experiments/kather_texture.py            # about an hour on 2 CPU cores
    python experiments/kather_texture.py --quick    # every stage, small
    python experiments/kather_texture.py --report-only

Outputs: OUTPUT/results.md (a table per lab: F1 at each measured fraction,
AULC and its paired interval against the forest), results.json,
learning_curves.png, and every run's folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import analysis, anchor  # noqa: E402
from experiments.kather_domain_adaptation import (HARD, UNMODELLED, add_lab_arguments, apply_quick,  # noqa: E402
                                                  growing_budgets, paired_difference, pool_class_counts,
                                                  prepare_labs, read_curve, strategy_flags,
                                                  train_source_model, with_backbone)
from experiments.script_runs import run_script  # noqa: E402
from utils.common import plots  # noqa: E402
from utils.learning.run_files import finished, read_rounds  # noqa: E402

LABS = (HARD, UNMODELLED)
#: Labelled fractions of the pool measured after the initial set.
FRACTIONS = (0.02, 0.05, 0.10, 0.20, 0.50, 1.0)
STRATEGIES = ("random", "margin+warm")
SOURCES = ("no source", "source")
#: Arms on a SimCLR-pretrained small CNN: the backbone each runs.
SIMCLR = {"texture+simclr": "texture+small", "simclr": "small"}
#: The arm on the small CNN trained with the source lab's labels, frozen.
SUPERVISED = "small CNN"
#: Every arm but the anchors, by its backbone and source.
ARMS = (*SOURCES, *SIMCLR, SUPERVISED)
SIMCLR_FLAGS = ["--backbone", "small", "--backbone-weights", "none", "--batch-size", "256", "--optimizer", "adam",
                "--learning-rate", "1e-3"]
HEAD_FLAGS = ["--freeze-backbone", "--optimizer", "adam", "--learning-rate", "1e-3", "--epochs", "60",
              "--batch-size", "128"]
#: How each round fits the head (``--head-from``, ``--patience``): ``refit`` (from its weights before
#: round 0, every epoch of 60, the last kept) or ``early`` (from the previous round's head, early stopping
#: on validation loss, patience 8).
HEAD_RECIPES = {"refit": ("start", 0), "early": ("last", 8)}
QUICK = {"images_per_class": 24, "seeds": 1, "initial": 2, "pretrain_epochs": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None,
                        help="default experiment_output/texture, or experiment_output/texture_quick with --quick")
    parser.add_argument("--quick", action="store_true", help=f"a small version that checks that every stage runs: {QUICK}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm, each with its own source model (default 3)")
    parser.add_argument("--labs", nargs="+", default=list(LABS), choices=[HARD, UNMODELLED, "stain"])
    parser.add_argument("--report-only", action="store_true", help="tables from the runs finished so far")
    parser.add_argument("--head-recipe", choices=tuple(HEAD_RECIPES), default="refit",
                        help="refit: each round's head from its first weights, 60 epochs, the last kept (default); "
                             "early: from the previous round's, early stopping on validation loss")
    parser.add_argument("--pretrain-epochs", type=int, default=30,
                        help="SimCLR epochs per lab, shared by its seeds (default 30)")
    add_lab_arguments(parser)
    parser.set_defaults(backbone="texture", initial=4)
    args = parser.parse_args(argv)
    apply_quick(args, QUICK, "texture")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    out = prepare_labs(args, tuple(args.labs))
    sources = [train_source_model(args, out, f"source_model_seed_{k}", ("--freeze-backbone", "--seed", str(k)))
               for k in range(args.seeds)]
    cnn_sources = [train_source_model(with_backbone(args, "small"), out, f"cnn_source_seed_{k}",
                                      ("--seed", str(k)))
                   for k in range(args.seeds)]
    results = {}
    for lab in args.labs:
        per_class = pool_class_counts(out / "records" / f"target_{lab}", out / "staged" / "target_split.json")
        budgets, rounds = growing_budgets(per_class, args.initial, FRACTIONS)
        jobs = [(lab, source, strategy, seed) for seed in range(args.seeds) for source in ARMS
                for strategy in STRATEGIES]
        if not args.report_only:
            pretrained = pretrain(args, out, lab)
            with ThreadPoolExecutor(args.jobs) as executor:
                list(executor.map(lambda job: texture_run(args, out, sources, cnn_sources, pretrained, budgets,
                                                          rounds, *job), jobs))
        results[lab] = summarise(args, out, lab, sum(per_class.values()))
    minutes = (time.perf_counter() - started) / 60
    write_report(out, results, minutes, args.head_recipe)
    print(f"\n{(out / 'results.md').read_text()}\nfigure: {out / 'learning_curves.png'}")


def pretrain(args: argparse.Namespace, out: Path, lab: str) -> Path:
    """SimCLR on the source lab's records and the target lab's pool (its
    training images only), ``--pretrain-epochs`` epochs, shared by every seed
    of the lab; returns the backbone weights (resumed when interrupted)."""
    folder = out / "simclr_data" / lab
    folder.mkdir(parents=True, exist_ok=True)
    pool = set(json.loads((out / "staged" / "target_split.json").read_text())["train"])
    shards = list((out / "records" / "source").glob("*.tfrecord"))
    shards += [p for p in (out / "records" / f"target_{lab}").glob("*.tfrecord") if p.stem in pool]
    for shard in shards:
        for path in (shard, shard.with_name(shard.name + ".offsets.npz"), shard.with_suffix(".summary.json")):
            if path.exists() and not (folder / path.name).exists():
                (folder / path.name).symlink_to(path.resolve())
    config = folder / "extraction_config.json"
    if not config.exists():
        config.symlink_to((out / "records" / "source" / "extraction_config.json").resolve())
    run = out / f"simclr_{lab}"
    run_script("active_learning_train.py", ["--self-supervised", "simclr", "--data", str(folder), "--output",
                                            str(run), "--resume", "--epochs", str(args.pretrain_epochs),
                                            *SIMCLR_FLAGS], out / "logs" / lab / "simclr.txt")
    return run / "backbone.weights.h5"


def run_folder(out: Path, lab: str, source: str, strategy: str, seed: int) -> Path:
    return out / lab / source.replace(" ", "_") / strategy / f"seed_{seed}"


def texture_run(args: argparse.Namespace, out: Path, sources: list[Path], cnn_sources: list[Path], pretrained: Path,
                budgets: list[int], rounds: int, lab: str, source: str, strategy: str, seed: int) -> None:
    """One head-mode run (skipped when finished): the texture backbone with
    or without a source model, a backbone on the SimCLR CNN, or the small
    CNN of a source model."""
    run = run_folder(out, lab, source, strategy, seed)
    head_from, patience = HEAD_RECIPES[args.head_recipe]
    if (run / "config.json").exists():
        kept = json.loads((run / "config.json").read_text())["options"]
        if (kept.get("head_from", "last"), kept["patience"]) != (head_from, patience):
            sys.exit(f"error: {run} was fitted with --head-from {kept.get('head_from', 'last')} --patience "
                     f"{kept['patience']}, not the {args.head_recipe} recipe's: pass its --head-recipe, or "
                     f"another --output")
    if finished(run, rounds):
        return
    if source in SIMCLR:
        model = ["--backbone", SIMCLR[source], "--backbone-weights", str(pretrained)]
    elif source == SUPERVISED:
        model = ["--backbone", "small", "--backbone-weights", "none", "--weights", str(cnn_sources[seed])]
    else:
        model = ["--backbone", args.backbone, "--backbone-weights", "none"]
        model += ["--weights", str(sources[seed]), "--adapt-bn"] if source == "source" else []
    started = time.perf_counter()
    run_script("active_learning_train.py", [
        "--data", str(out / "records" / f"target_{lab}"), "--output", str(run), "--resume",
        "--split", str(out / "staged" / "target_split.json"), "--head-units", args.head_units, *model,
        *strategy_flags(strategy), "--initial", str(args.initial), "--rounds", str(rounds),
        "--budgets", *map(str, budgets), "--no-figures", "--slide-class-cap", "0", "--seed", str(seed),
        *HEAD_FLAGS, "--head-from", head_from, "--patience", str(patience),
    ], out / "logs" / lab / f"{source.replace(' ', '_')}_{strategy}_seed_{seed}.txt")
    print(f"{lab} {source} {strategy} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)


def arm_name(source: str, strategy: str) -> str:
    if source == SUPERVISED:
        return f"{SUPERVISED}, source, {strategy}"
    return f"{source}, no source, {strategy}" if source in SIMCLR else f"texture, {source}, {strategy}"


def summarise(args: argparse.Namespace, out: Path, lab: str, pool: int) -> dict:
    """Per arm and anchor: the test macro F1 at each measured fraction (per
    seed), the AULC, and its paired interval against the forest."""
    arms: dict[str, dict[str, list[analysis.Curve]]] = {}
    zero_label = []
    for seed in range(args.seeds):
        first = read_rounds(run_folder(out, lab, "source", "random", seed))[0]
        zero_label.append({"val": first.val_macro_f1, "test": first.test_macro_f1})
        for name in ARMS:
            for strategy in STRATEGIES:
                for split in ("val", "test"):
                    curve, _ = read_curve(run_folder(out, lab, name, strategy, seed), pool, f"{split}_macro_f1")
                    arms.setdefault(arm_name(name, strategy), {}).setdefault(split, []).append(curve)
    arms.update(anchor.curves_for(out, lab, [run_folder(out, lab, "no source", "random", seed)
                                             for seed in range(args.seeds)], pool, int(args.tile_size)))
    table = {}
    forest = [analysis.area_under_curve(c) for c in arms["forest"]["test"]]
    for name, curves in arms.items():
        areas = [analysis.area_under_curve(c) for c in curves["test"]]
        f1 = np.array([c.f1 for c in curves["test"]])
        table[name] = {"fractions": curves["test"][0].fraction.tolist(), "f1": f1.mean(0).tolist(),
                       "f1_sd": f1.std(0).tolist(), "per_seed": f1.tolist(), "aulc": float(np.mean(areas)),
                       "areas": areas, "vs_forest": analysis.paired_interval(np.array(areas), np.array(forest)),
                       "val_aulc": float(np.mean([analysis.area_under_curve(c) for c in curves["val"]]))}
    for name in ARMS:
        picked, drawn = (table[arm_name(name, strategy)] for strategy in ("margin+warm", "random"))
        picked["vs_random"] = analysis.paired_interval(np.array(picked["areas"]), np.array(drawn["areas"]))
    for strategy in STRATEGIES:
        simclr, supervised = table[arm_name("simclr", strategy)], table[arm_name(SUPERVISED, strategy)]
        simclr["vs_supervised"] = analysis.paired_interval(np.array(simclr["areas"]), np.array(supervised["areas"]))
    chosen = max((n for n in table if n not in anchor.ANCHORS), key=lambda n: table[n]["val_aulc"])
    simclr = json.loads((out / f"simclr_{lab}" / "pretraining.json").read_text())
    return {"pool": pool, "seeds": args.seeds, "table": table, "chosen": chosen,
            "pretraining": {"epochs": len(simclr["history"]),
                            "minutes": sum(e["seconds"] for e in simclr["history"]) / 60},
            "zero_label": {split: float(np.mean([z[split] for z in zero_label])) for split in ("val", "test")}}


def write_report(out: Path, results: dict, minutes: float, recipe: str) -> None:
    head_from, patience = HEAD_RECIPES[recipe]
    lines = [f"Wall time {minutes:.0f} min (runs skipped when finished are not timed). Each round's head: the "
             f"{recipe} recipe (`--head-from {head_from} --patience {patience}`, at most 60 epochs).", ""]
    for lab, r in results.items():
        table = r["table"]
        fractions = next(iter(table.values()))["fractions"]
        lines += [f"### {lab}: test macro F1, mean ± sd over {r['seeds']} seed(s); target pool {r['pool']} tiles", "",
                  f"The texture source models before any target label (round −1, `--adapt-bn`): validation "
                  f"{r['zero_label']['val']:.3f}, test {r['zero_label']['test']:.3f}.", "",
                  f"SimCLR pretraining of the small CNN (shared by the seeds): {r['pretraining']['epochs']} epoch(s), "
                  f"{r['pretraining']['minutes']:.0f} min on this machine's CPU, on the source lab and this lab's "
                  f"pool, never its validation or test images.", "",
                  "| arm | " + " | ".join(f"{f:.1%}" for f in fractions) + " | AULC | validation AULC | AULC − forest (95% CI) |",
                  "|---|" + "---|" * (len(fractions) + 3)]
        for name, e in sorted(table.items(), key=lambda kv: -kv[1]["aulc"]):
            cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(e["f1"], e["f1_sd"]))
            diff = "—" if name == "forest" else paired_difference(*e["vs_forest"])
            lines.append(f"| {name} | {cells} | {e['aulc']:.3f} | {e['val_aulc']:.3f} | {diff} |")
        chosen = r["chosen"]
        ahead = np.array(table[chosen]["f1"]) - np.array(table["forest"]["f1"])
        lines += ["", f"The tool's arm of highest validation AULC: {chosen} ({table[chosen]['val_aulc']:.3f}; "
                  f"the forest's {table['forest']['val_aulc']:.3f}). Its mean test F1 minus the forest's at each "
                  f"fraction: " + ", ".join(f"{d:+.3f}" for d in ahead)
                  + f" ({int((ahead >= 0).sum())} of {len(ahead)} fractions at or above).",
                  "", "AULC of margin+warm − random (95% CI): "
                  + "; ".join(f"{arm_name(name, 'margin+warm').removesuffix(', margin+warm')} "
                              f"{paired_difference(*table[arm_name(name, 'margin+warm')]['vs_random'])}"
                              for name in ARMS) + ".", "",
                  "AULC of the SimCLR CNN − the small CNN trained on the source lab's labels (both frozen, the "
                  "head fitted on the target; 95% CI), and the fractions where its mean F1 is the higher: "
                  + "; ".join(f"{strategy} {paired_difference(*table[arm_name('simclr', strategy)]['vs_supervised'])}"
                              f", {ahead_at(table, arm_name('simclr', strategy), arm_name(SUPERVISED, strategy))}"
                              for strategy in STRATEGIES) + ".", "",
                  "Mean test F1 of texture+simclr minus the forest's at each fraction: " + "; ".join(
                      f"{strategy} " + ", ".join(f"{d:+.3f}" for d in np.subtract(
                          table[arm_name('texture+simclr', strategy)]["f1"], table["forest"]["f1"]))
                      for strategy in STRATEGIES) + ".", ""]
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "learning_curves.png")


def ahead_at(table: dict, name: str, other: str) -> str:
    """``5 of 7 fractions``: where ``name``'s mean F1 is above ``other``'s."""
    above = np.array(table[name]["f1"]) > np.array(table[other]["f1"])
    return f"{int(above.sum())} of {len(above)} fractions"


def plot(results: dict, path: Path) -> None:
    """Mean curves per lab on a log axis of the labelled fraction; the forest in black."""
    fig = plots.Figure(figsize=(6.4 * len(results), 4.8))
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, (lab, r) in zip(axes[0], results.items()):
        for name, e in r["table"].items():
            x = np.array(e["fractions"]) * 100
            mean, sd = np.array(e["f1"]), np.array(e["f1_sd"])
            anchor_line = name in anchor.ANCHORS
            line, = ax.plot(x, mean, marker="o", ms=3, label=name, ls="--" if anchor_line else "-",
                            color="black" if name == "forest" else None, lw=2.2 if name == "forest" else 1.5)
            ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.12, lw=0)
        ax.set_xscale("log")
        ticks = np.array(next(iter(r["table"].values()))["fractions"]) * 100
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("target pool labelled (%, log scale; every point measured)")
        ax.set_ylabel("test macro F1")
        ax.set_title(f"{lab}: mean ± sd over {r['seeds']} seed(s)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    plots.save(fig, path, dpi=100)


if __name__ == "__main__":
    main()

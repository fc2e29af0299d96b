#!/usr/bin/env python
"""How few labels a new lab needs when the unlabelled pool is used too.

The same data, labs, splits and scripts as experiments/kather_domain_adaptation.py
(Kather et al. 2016 tiles; slides 01-04 and 10 the source lab, 05-09 the
target), full fine-tuning, and five recipes of adaptation:

  a. today's: the source model trained and fine-tuned without stain
     augmentation, on labelled tiles only;
  b. stain augmentation (``--stain-jitter PRESET``) for the source model and
     the fine-tuning, its preset (light or strong) chosen on the harder lab's
     target validation split: the one whose source model scores the higher
     validation macro F1 there before any label;
  c. b plus pseudo-labels from the pool (``--semi-supervised pseudo``);
  d. b plus FixMatch (``--semi-supervised fixmatch``) with its published
     ingredients: RandAugment and Cutout for the strong view, a moving
     average of the weights, 7 pool tiles per labelled one, and epochs that
     pass over the unlabelled pool;
  e. a plus the same FixMatch: the unlabelled pool without stain
     augmentation of the source model and the labelled tiles (FixMatch's
     strong view has its own stain change).

Each recipe runs with ``random`` picks (``--strategies random margin+warm``
adds the strategy that never fell behind random in the domain-adaptation
experiment, about an hour more), on two target labs: ``stain_blur_jpeg``
(another stain, a softer focus and JPEG) and ``eosin_gamma_resolution``,
whose change (another eosin dye, a display gamma and a coarser scanner) the
stain augmentation does not model, so that the test is not circular.
Labels grow from 5 per class to each of :data:`FRACTIONS` of the pool, so
that each is measured, not interpolated.
Every seed has its own source models, so that the intervals include the
source model's variance. The fair ceiling is the fine-tuning on 100% of the
pool of the better supervised recipe, a or b, by validation F1. Round -1 of
each run scores its source model on the target test split before any label:
the zero-label F1. The small backbone has no batch normalisation, so
``--adapt-bn`` is measured on a MobileNetV2 (alpha 0.35) trained the same
way: the zero-label F1 of recipes a and b on each lab, with and without
re-estimating its batch-norm statistics on the pool.

Every setting was fixed before the runs or chosen on the target validation
split (the stain preset); the test split chooses nothing.
Outputs in OUTPUT: results.md (a table per lab: labels from which F1 stays
within 1 point of the ceiling, AULC with its paired interval against recipe
a with random, F1 at 10/25/50%, zero-label F1, pool tiles used and how many
were right), results.json, learning_curves.png, stain_examples.png, and
every run's folder; a rerun skips finished runs and resumes killed ones.

    python experiments/kather_recipes.py            # the whole design
    python experiments/kather_recipes.py --quick    # every stage, small
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import analysis  # noqa: E402
from experiments import kather_domain_adaptation as base  # noqa: E402
from utils.learning.run_files import SavedRound, read_rounds  # noqa: E402

#: Labelled fractions of the pool measured after the initial set (those of the table among them).
FRACTIONS = (0.02, 0.05, 0.10, 0.20, 0.25, 0.50, 1.0)
#: The labs of the default design; the first shift (``stain``, colour only)
#: runs on request, ``--labs stain``, since a third lab would pass 3 hours.
LABS = (base.HARD, base.UNMODELLED)
#: Pool tiles per labelled tile in each FixMatch batch (FixMatch's μ).
FIXMATCH_RATIO = 7
#: The stain-jitter presets recipe b chooses from.
PRESETS = ("light", "strong")
#: Each recipe: whether its source model and fine-tuning use stain jitter, and
#: its other fine-tuning flags.
RECIPES: dict[str, tuple[bool, tuple[str, ...]]] = {
    "a": (False, ()),
    "b": (True, ()),
    "c": (True, ("--semi-supervised", "pseudo")),
    "d": (True, ("--semi-supervised", "fixmatch", "--fixmatch-ratio", str(FIXMATCH_RATIO))),
    "e": (False, ("--semi-supervised", "fixmatch", "--fixmatch-ratio", str(FIXMATCH_RATIO))),
}
STRATEGIES = ("random", "margin+warm")
#: A backbone with batch normalisation, for the zero-label check of ``--adapt-bn``.
BN_BACKBONE = "mobilenetv2"
#: Today's recipe: what every other one is compared with.
TODAY = "a random"
#: Fine-tuning on 100% of the pool with each supervised recipe; the fair
#: ceiling is the one with the higher validation F1.
CEILINGS = {"ceiling (a)": "a", "ceiling (b)": "b"}
#: ``--quick``: every stage (every source model, the preset's choice, the
#: batch-norm check, every recipe and the ceiling) on little data, with one
#: strategy on one lab and one query round.
QUICK = {"images_per_class": 8, "seeds": 1, "source_epochs": "2", "fractions": [1.0], "strategies": ["random"],
         "labs": [base.HARD]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None,
                        help="default experiment_output/recipes, or experiment_output/recipes_quick with --quick")
    parser.add_argument("--quick", action="store_true", help=f"a small version that checks every stage: {QUICK}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per recipe, strategy and lab (default 3)")
    parser.add_argument("--strategies", nargs="+", default=["random"], choices=STRATEGIES,
                        help="strategies to run each recipe with (default random, to stay under 3 hours)")
    parser.add_argument("--labs", nargs="+", default=list(LABS), choices=(*LABS, base.EASY),
                        help=f"target labs to fine-tune on (default {' '.join(LABS)}; {base.HARD} is cut "
                             "either way: it chooses the preset)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=tuple(RECIPES),
                        help="recipes to fine-tune with (default all; a is the baseline, so it always runs)")
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS),
                        help="labelled fractions of the pool to measure, one round each (default "
                             f"{' '.join(map(str, FRACTIONS))})")
    parser.add_argument("--report-only", action="store_true",
                        help="start nothing: write the tables from the seeds whose runs have all finished, to "
                             "read a long run's results while it goes on (once its source models and "
                             "zero-label runs have finished)")
    base.add_lab_arguments(parser)
    args = parser.parse_args(argv)
    base.apply_quick(args, QUICK, "recipes")
    args.recipes = sorted({"a", *args.recipes})
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.report_only:
        check_the_stages_ran(args)
    out = base.prepare_labs(args, tuple(dict.fromkeys((base.HARD, *args.labs))))  # the harder lab picks the preset
    # Two waves, each filling the jobs: every seed's source models, each with
    # its zero-label scores in the same job (recipe a's batch-norm checks, the
    # longest, first); then recipe b's batch-norm checks, which need the
    # preset, beside the fine-tuning runs.
    seeds = range(args.seeds)
    with ThreadPoolExecutor(args.jobs) as executor:
        bn_plain = [executor.submit(batch_norm_recipe, args, out, "a", None, k) for k in seeds]
        scoring = {(kind, k): executor.submit(preset_source, args, out, kind, k) for k in seeds for kind in PRESETS}
        plain = [executor.submit(base.train_source_model, args, out, source_name("plain", k), ("--seed", str(k)))
                 for k in seeds]
    sources = [{"plain": plain[k].result(), **{kind: scoring[kind, k].result()[0] for kind in PRESETS}}
               for k in seeds]
    zero_label = {kind: over_seeds([scoring[kind, k].result()[1] for k in seeds]) for kind in PRESETS}
    preset = max(PRESETS, key=lambda kind: zero_label[kind]["val"])
    print(f"stain preset: {preset} ({base.HARD} validation macro F1 before any label, mean of {args.seeds} "
          "source model(s): " + ", ".join(f"{kind} {zero_label[kind]['val']:.3f}" for kind in PRESETS) + ")",
          flush=True)
    split = out / "staged" / "target_split.json"
    records = out / "records" / f"target_{args.labs[0]}"  # every lab has the same images and split
    per_class = base.pool_class_counts(records, split)
    pool = sum(per_class.values())
    budgets, rounds = base.growing_budgets(per_class, args.initial, tuple(args.fractions))
    names = [*CEILINGS, *runs(args.strategies, args.recipes)]
    jobs = [(lab, name, seed) for lab in args.labs for seed in range(args.seeds) for name in names]
    with ThreadPoolExecutor(args.jobs) as executor:
        bn_stained = [executor.submit(batch_norm_recipe, args, out, "b", preset, k) for k in seeds]
        if not args.report_only:
            list(executor.map(lambda job: run(args, out, sources, preset, budgets, rounds, *job), jobs))
    batch_norm = {recipe: mean_by_lab([future.result() for future in futures])
                  for recipe, futures in (("a", bn_plain), ("b", bn_stained))}
    finished = {lab: finished_seeds(out / lab / "full", names, rounds, args.seeds) for lab in args.labs}
    for lab in [lab for lab, n in finished.items() if n == 0]:
        print(f"{lab}: no seed has finished every run yet, so it has no table", flush=True)
    results = {"shifts": {lab: {"full": {**summary(out / lab / "full", n, pool, args.strategies, args.recipes,
                                                     int(args.tile_size)),
                                         "budgets": budgets, "rounds": rounds}}
                          for lab, n in finished.items() if n},
               "preset": preset, "zero_label": zero_label, "adapt_bn": batch_norm,
               "minutes": None if args.report_only else (time.perf_counter() - started) / 60}
    write_report(out, results, pool)
    print(f"\n{(out / 'results.md').read_text()}\nfigure: {out / 'learning_curves.png'}")


def runs(strategies: list[str], recipes: list[str]) -> dict[str, tuple[str, str]]:
    """Every recipe with every strategy, by name (``a random``): (recipe, strategy)."""
    return {f"{recipe} {strategy}": (recipe, strategy) for recipe in recipes for strategy in strategies}


def check_the_stages_ran(args: argparse.Namespace) -> None:
    """``--report-only`` starts nothing: every source model and zero-label run
    the tables need must have finished, or it stops here."""
    out, seeds = args.output, range(args.seeds)
    needed = [out / source_name(kind, k) for kind in ("plain", *PRESETS, *map(batch_norm_kind, "ab")) for k in seeds]
    needed += [out / base.HARD / "full" / zero_label_name(kind) / f"seed_{k}" for kind in PRESETS for k in seeds]
    needed += [out / lab / "full" / zero_label_name(batch_norm_kind(recipe), adapt) / f"seed_{k}"
               for lab in args.labs for recipe in "ab" for adapt in (False, True) for k in seeds]
    missing = [path for path in needed if SavedRound.read(path) is None]
    if missing:
        sys.exit(f"error: --report-only: {len(missing)} source model(s) or zero-label run(s) have not finished, "
                 f"e.g. {missing[0]}; run without --report-only first")


def finished_seeds(folder: Path, names: list[str], rounds: int, seeds: int) -> int:
    """How many of the first ``seeds`` seeds have every run of ``names`` in
    ``folder`` finished all ``rounds``."""
    def finished(name: str, seed: int) -> bool:
        saved = SavedRound.read(folder / folder_name(name) / f"seed_{seed}")
        return saved is not None and saved.round == rounds
    return next((k for k in range(seeds) if not all(finished(name, k) for name in names)), seeds)


def preset_source(args: argparse.Namespace, out: Path, preset: str, seed: int) -> tuple[Path, dict[str, float]]:
    """Seed ``seed``'s source model trained with the stain jitter of
    ``preset``, and its :func:`zero_label_scores`, in one job."""
    source = base.train_source_model(args, out, source_name(preset, seed),
                                     ("--stain-jitter", preset, "--seed", str(seed)))
    return source, zero_label_scores(args, out, preset, source, seed)


def zero_label_scores(args: argparse.Namespace, out: Path, kind: str, source: Path, seed: int) -> dict[str, float]:
    """Macro F1 of a source model on the harder lab's target validation and
    test splits before any label (a ``--rounds -1`` run)."""
    name = zero_label_name(kind)
    base.target_run(args, out, source, 1, -1, base.HARD, "full", "random", seed, name=name)
    first = read_rounds(out / base.HARD / "full" / name / f"seed_{seed}")[0]
    return {"val": first.val_macro_f1, "test": first.test_macro_f1}


def over_seeds(scores: list[dict[str, float]]) -> dict[str, float | list[float]]:
    """Each split's mean and standard deviation over the seeds' scores, and the scores."""
    return {**{split: float(np.mean([s[split] for s in scores])) for split in ("val", "test")},
            **{f"{split}_sd": float(np.std([s[split] for s in scores])) for split in ("val", "test")},
            **{f"{split}_per_seed": [s[split] for s in scores] for split in ("val", "test")}}


def batch_norm_source(args: argparse.Namespace, out: Path, recipe: str, preset: str | None, seed: int) -> Path:
    """Seed ``seed``'s MobileNetV2 source model for the batch-norm check of
    ``recipe``, with the stain jitter of ``preset`` (None: none)."""
    return base.train_source_model(base.with_backbone(args, BN_BACKBONE), out,
                                   source_name(batch_norm_kind(recipe), seed),
                                   ("--seed", str(seed), *(() if preset is None else ("--stain-jitter", preset))))


def batch_norm_score(args: argparse.Namespace, out: Path, recipe: str, source: Path, lab: str, adapt: bool,
                     seed: int) -> float:
    """Zero-label test macro F1 of ``source`` on ``lab``, with ``--adapt-bn`` or without."""
    name = zero_label_name(batch_norm_kind(recipe), adapt)
    base.target_run(base.with_backbone(args, BN_BACKBONE), out, source, 1, -1, lab, "full", "random", seed,
                    ("--adapt-bn",) if adapt else (), name)
    return read_rounds(out / lab / "full" / name / f"seed_{seed}")[0].test_macro_f1


def batch_norm_recipe(args: argparse.Namespace, out: Path, recipe: str, preset: str | None,
                      seed: int) -> dict[str, dict[str, float]]:
    """The batch-norm check of a recipe and seed, its source model first, in one job."""
    source = batch_norm_source(args, out, recipe, preset, seed)
    return by_lab({(lab, adapt): batch_norm_score(args, out, recipe, source, lab, adapt, seed)
                   for lab in args.labs for adapt in (False, True)})


def source_name(kind: str, seed: int) -> str:
    """The folder of a source model: ``source_plain_seed_0``, ``source_mobilenetv2_a_seed_2``."""
    return f"source_{kind}_seed_{seed}"


def batch_norm_kind(recipe: str) -> str:
    """The batch-norm check's source model of ``recipe``: ``mobilenetv2_a``."""
    return f"{BN_BACKBONE}_{recipe}"


def zero_label_name(kind: str, adapt: bool = False) -> str:
    """The run folder of the zero-label scores of the source models of
    ``kind`` (a preset or a batch-norm kind; a seed each), with
    ``--adapt-bn`` or without."""
    return f"zero_label_{kind}" + ("_adapt_bn" if adapt else "")


def mean_by_lab(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """:func:`by_lab`'s scores of every seed, as their means."""
    return {lab: {key: float(np.mean([scores[lab][key] for scores in per_seed])) for key in per_seed[0][lab]}
            for lab in per_seed[0]}


def by_lab(scores: dict[tuple[str, bool], float]) -> dict[str, dict[str, float]]:
    """``{(lab, adapt): F1}`` as ``{lab: {"without": F1, "with": F1}}``."""
    return {lab: {"with" if adapt else "without": f1 for (other, adapt), f1 in scores.items() if other == lab}
            for lab, _ in scores}


def run(args: argparse.Namespace, out: Path, sources: list[dict[str, Path]], preset: str, budgets: list[int],
        rounds: int, lab: str, name: str, seed: int) -> None:
    """One fine-tuning run (skipped when finished) from its seed's source model."""
    recipe, strategy = (CEILINGS[name], base.CEILING) if name in CEILINGS else runs(args.strategies, args.recipes)[name]
    stained, flags = RECIPES[recipe]
    stain = ("--stain-jitter", preset) if stained else ()
    base.target_run(args, out, sources[seed][preset if stained else "plain"], budgets, rounds, lab, "full", strategy,
                    seed, (*stain, *flags), folder_name(name))


def folder_name(name: str) -> str:
    """A run's folder: ``a random`` in ``a_random``, ``ceiling (b)`` in ``ceiling_b``."""
    return name.replace(" ", "_").replace("(", "").replace(")", "")


def summary(folder: Path, seeds: int, pool: int, strategies: list[str], recipes: list[str], tile_size: int) -> dict:
    """:func:`base.summarise` of every run against today's recipe, with each
    run's zero-label F1 and its use of the pool (tiles or FixMatch views per
    round, and their accuracy), and the anchors fitted on today's recipe's
    labelled sets."""
    names = {folder_name(name): name for name in runs(strategies, recipes)}
    ceilings = {name: kept_scores(folder / folder_name(name), seeds) for name in CEILINGS}
    fair = max(ceilings, key=lambda name: ceilings[name]["val"])
    anchors = base.anchor_rows(folder.parents[1], folder.parent.name, folder.name, folder_name(TODAY), seeds, pool,
                               tile_size)
    result = base.summarise(folder, dict.fromkeys(names, seeds), seeds, pool, baseline=folder_name(TODAY),
                            ceiling=folder_name(fair), anchors=anchors)
    result["fair_ceiling"], result["ceilings"] = fair, ceilings
    result["table"] = {names.get(k, k): v for k, v in result["table"].items()}
    result["curves"] = {names.get(k, k): v for k, v in result["curves"].items()}
    for short, name in names.items():
        zero_label = [read_rounds(folder / short / f"seed_{k}")[0] for k in range(seeds)]
        rows = [read_rounds(folder / short / f"seed_{k}", fitted_only=True) for k in range(seeds)]
        entry = result["table"][name]
        entry["zero_label_f1"] = float(np.mean([r.test_macro_f1 for r in zero_label]))
        used = [float(row.pseudo_labelled) for r in rows for row in r]
        right = [row.pseudo_accuracy for r in rows for row in r if not math.isnan(row.pseudo_accuracy)]
        entry["pool_used_per_round"] = float(np.mean(used)) if used else 0.0
        entry["pool_accuracy"] = float(np.mean(right)) if right else float("nan")
        measured = np.array([[row.test_macro_f1 for row in r] for r in rows])
        entry["fractions"] = [row.labelled / pool for row in rows[0]]
        entry["f1"], entry["f1_sd"] = measured.mean(0).tolist(), measured.std(0).tolist()
    for name, (recipe, strategy) in runs(strategies, recipes).items():
        shared = f"{base_recipe(recipe)} {strategy}"
        if shared != name and shared in result["table"]:
            entry, other = result["table"][name], result["table"][shared]
            entry["vs_shared"] = [shared, *analysis.paired_interval(np.array(entry["areas"]), np.array(other["areas"]))]
    return result


def base_recipe(recipe: str) -> str:
    """The recipe without the pool whose source model ``recipe`` shares: a or b."""
    stained = RECIPES[recipe][0]
    return next(name for name, (jitter, flags) in RECIPES.items() if jitter == stained and not flags)


def kept_scores(run: Path, seeds: int) -> dict[str, float]:
    """Validation and test macro F1 of the round kept by validation F1 in
    ``run/seed_<k>``, mean over the seeds."""
    kept = [max(read_rounds(run / f"seed_{k}", fitted_only=True), key=lambda r: r.val_macro_f1)
            for k in range(seeds)]
    return {"val": float(np.mean([r.val_macro_f1 for r in kept])),
            "test": float(np.mean([r.test_macro_f1 for r in kept]))}


def write_report(out: Path, results: dict, pool: int) -> None:
    zero = results["zero_label"]
    time_line = ("tables from the seeds finished so far (`--report-only`)" if results["minutes"] is None
                 else f"wall time {results['minutes']:.0f} min")
    lines = [f"Target pool {pool} tiles; {time_line}.", "",
             f"Stain preset of recipes b-d: **{results['preset']}**, whose source models score the higher mean "
             f"macro F1 on the {base.HARD} validation split before any label ("
             + "; ".join(f"{kind}: validation {s['val']:.3f} ± {s['val_sd']:.3f}, test {s['test']:.3f} ± "
                         f"{s['test_sd']:.3f}" for kind, s in zero.items()) + ").", "",
             f"Zero-label test macro F1 of a {BN_BACKBONE} source model (mean of the seeds'), without / with "
             "`--adapt-bn` (the small backbone has no batch normalisation, so the option changes nothing for it):",
             "",
             "| recipe | " + " | ".join(results["adapt_bn"]["a"]) + " |", "|---|" + "---|" * len(results["adapt_bn"]["a"])]
    lines += [f"| {recipe} | " + " | ".join(f"{v['without']:.3f} / {v['with']:.3f}" for v in labs.values()) + " |"
              for recipe, labs in results["adapt_bn"].items()]
    lines.append("")
    for lab, modes in results["shifts"].items():
        r = modes["full"]
        lines += [f"### {lab}: whole network fine-tuned, {r['rounds']} rounds of {', '.join(map(str, r['budgets']))} "
                  "tiles", "",
                  f"Fair ceiling: recipe {CEILINGS[r['fair_ceiling']]} on 100% of the pool, {r['ceiling']:.3f} ± "
                  f"{r['ceiling_sd']:.3f} over {r['ceiling_seeds']} seeds (the supervised recipe of higher validation "
                  "F1; validation / test: " + ", ".join(f"{CEILINGS[name]} {c['val']:.3f} / {c['test']:.3f}"
                                                         for name, c in r["ceilings"].items()) + ").", "",
                  *base.table_lines(r["table"], TODAY, "recipe, strategy"), "",
                  "| recipe, strategy | zero-label F1 (round -1) | pool tiles used per round | right |",
                  "|---|---|---|---|"]
        recipes = [(name, e) for name, e in r["table"].items() if "zero_label_f1" in e]
        for name, e in recipes:
            right = "—" if np.isnan(e["pool_accuracy"]) else f"{e['pool_accuracy']:.1%}"
            lines.append(f"| {name} | {e['zero_label_f1']:.3f} | {e['pool_used_per_round']:.0f} | {right} |")
        fractions = recipes[0][1]["fractions"]
        lines += ["", "Test macro F1 at each measured fraction of the pool, mean ± sd over the seeds:", "",
                  "| recipe, strategy | " + " | ".join(f"{f:.1%}" for f in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        lines += [f"| {name} | " + " | ".join(f"{m:.3f} ± {sd:.3f}" for m, sd in zip(e["f1"], e["f1_sd"])) + " |"
                  for name, e in recipes]
        lines += ["", "AULC against the recipe whose source model it shares (95% CI): " + "; ".join(
            f"{name} − {e['vs_shared'][0]} {base.paired_difference(*e['vs_shared'][1:])}"
            for name, e in recipes if "vs_shared" in e) + ".", ""]
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if results["shifts"]:
        base.plot(results, out / "learning_curves.png", TODAY)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The paper's story in miniature, on a built-in synthetic dataset, on a CPU.

1. Generate two domains of synthetic pyramidal TIFF slides with QuPath GeoJSON
   annotations under the paper's annotation names: a source lab and a target
   lab whose stain gives a different colour cast.
2. Extract tile triplets from both (tfrecord_generator.py).
3. Train a source model on the source domain (active_learning_train.py, initial
   fit only).
4. Adapt it to the target domain with active learning (active_learning_train.py
   --weights source model): its target F1 before and after is printed.
5. Map a held-out target slide (active_learning_inference.py) and compare the
   map with the slide's known regions.

Every step prints the command it runs, so it doubles as a tutorial. Rerunning
reuses what is done (extraction shards, finished rounds, finished maps).

    python demo.py                      # small backbone, a few minutes on 2 cores
    python demo.py --backbone vgg16     # the paper's backbone (ImageNet weights, slow on a CPU)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import active_learning_inference
import active_learning_train
import tfrecord_generator
from utils.common.config import load_config
from utils.learning.run_files import SavedRound, read_rounds
from utils.tiles.synthetic import SOURCE_STAIN, TARGET_STAIN, make_slide, random_layout, truth_grid

SIZES = {
    # slides per domain, slide side (px), tile size (px), epochs of the source fit and of each
    # adaptation round, initial labels per class, labels per round, rounds
    "default": dict(slides=5, side=2048, tile=64, source_epochs=15, epochs=6, initial=2, budget=15, rounds=3),
    "quick": dict(slides=4, side=1536, tile=64, source_epochs=12, epochs=8, initial=5, budget=15, rounds=2),
}


def run(step: str, main, argv: list[str]) -> None:
    """Run one of the project's scripts as a user would, and stop on failure."""
    print(f"\n== {step}\n$ python {main.__module__}.py {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        sys.exit(f"demo stopped: {main.__module__}.py exited with status {code}")


def make_domain(root: Path, domain: str, count: int, side: int, stain, first_seed: int) -> None:
    """``count`` slides of one domain with their annotations (kept if present)."""
    for i in range(count):
        stem = f"{domain}_{i}"
        if not (root / "slides" / domain / f"{stem}.tiff").exists():
            make_slide(root / "slides" / domain, stem, side, side, random_layout(side, side, first_seed + i),
                       seed=first_seed + i, stain=stain, annotations_dir=root / "annotations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="folder for everything (default demo_output)")
    parser.add_argument("--backbone", default="small", choices=["small", "mobilenetv2", "vgg16"],
                        help="small (default, CPU-friendly) or the paper's vgg16")
    parser.add_argument("--quick", action="store_true", help="the smallest size, as used by the tests")
    parser.add_argument("--strategy", default="class_ratio", help="query strategy of the adaptation (default: the paper's)")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "default"]
    root = args.output
    started = time.perf_counter()

    print(f"== generating synthetic slides in {root / 'slides'}")
    make_domain(root, "source", size["slides"], size["side"], SOURCE_STAIN, first_seed=0)
    make_domain(root, "target", size["slides"], size["side"], TARGET_STAIN, first_seed=100)
    held_out_stem = "heldout_target"
    held_out = root / "slides" / "heldout" / f"{held_out_stem}.tiff"
    held_out_regions = held_out_layout(size["side"])
    if not held_out.exists():
        make_slide(held_out.parent, held_out_stem, size["side"], size["side"], held_out_regions, seed=999,
                   stain=TARGET_STAIN, annotations_dir=root / "annotations")

    tile = ["--tile-size", str(size["tile"])]
    for domain in ("source", "target"):
        run(f"extracting {domain}-domain tiles", tfrecord_generator.main,
            ["--slides", str(root / "slides" / domain), "--annotations", str(root / "annotations"),
             "--output", str(root / "tiles" / domain), *tile, "--workers", "2"])

    weights = ["--backbone", args.backbone]
    if args.backbone == "small":
        weights += ["--backbone-weights", "none", "--head-units", "128", "--optimizer", "adam",
                    "--learning-rate", "1e-3"]
    else:
        weights += ["--optimizer", "sgd", "--learning-rate", "1e-3"]
    common = [*weights, "--batch-size", "32", "--patience", "3", "--slide-class-cap", "200", "--seed", "0"]
    source_run = root / "runs" / "source"
    run("training the source-domain model", active_learning_train.main,
        ["--data", str(root / "tiles" / "source"), "--output", str(source_run), "--rounds", "0",
         "--initial", "200", "--epochs", str(size["source_epochs"]), "--no-augment", *common, *(["--resume"] if SavedRound.read(source_run) else [])])

    target_run = root / "runs" / "target"
    run("adapting it to the target domain with active learning", active_learning_train.main,
        ["--data", str(root / "tiles" / "target"), "--output", str(target_run),
         "--weights", str(source_run / "model.keras"), "--strategy", args.strategy,
         "--rounds", str(size["rounds"]), "--initial", str(size["initial"]), "--budget", str(size["budget"]),
         "--epochs", str(size["epochs"]), *common, *(["--resume"] if SavedRound.read(target_run) else [])])

    maps = root / "maps"
    run("mapping a held-out target slide", active_learning_inference.main,
        ["--slides", str(held_out), "--model", str(target_run / "model.keras"), "--output", str(maps),
         "--batch-size", "128"])

    rounds = read_rounds(target_run)
    best = SavedRound.read(target_run).kept
    kept = next(r for r in rounds if r.round == best)
    accuracy = map_accuracy(maps / held_out_stem, held_out_regions, size["side"], size["tile"])
    print("\n== results")
    print(f"source model on the target test slides: macro F1 {rounds[0].test_macro_f1:.3f}")
    print("after active learning, test macro F1 by round: "
          + ", ".join(f"{r.labelled} labels {r.test_macro_f1:.3f}" for r in rounds[1:]))
    print(f"model kept (best validation F1): round {best}, {kept.labelled} target labels, "
          f"test macro F1 {kept.test_macro_f1:.3f}")
    print(f"held-out target slide, tissue cells of the map matching the known regions: {100 * accuracy:.1f}%")
    print(f"tissue map:     {maps / held_out_stem / 'tissue_map_legend.png'}")
    print(f"overlay:        {maps / held_out_stem / 'overlay.png'}")
    print(f"QuPath GeoJSON: {maps / held_out_stem / 'tissue_map.geojson'}")
    print(f"learning curve: {target_run / 'learning_curve.png'}")
    print(f"finished in {time.perf_counter() - started:.0f} s")
    return 0


def held_out_layout(side: int):
    """The regions of the held-out target slide (known, so the map can be scored)."""
    return random_layout(side, side, 999)


def map_accuracy(folder: Path, regions, side: int, tile: int) -> float:
    """Share of the map's tissue cells whose class is the tissue drawn there;
    cells straddling two regions are not scored."""
    saved = np.load(folder / "probabilities.npz", allow_pickle=False)
    names = [*[str(n) for n in saved["class_names"]], load_config().undefined["name"]]
    truth = truth_grid(side, side, regions, tile)
    predicted = np.array(names, dtype=object)[saved["classes"]]
    scored = (truth != "") & (truth != "background")
    return float((predicted[scored] == truth[scored]).mean())


if __name__ == "__main__":
    sys.exit(main())

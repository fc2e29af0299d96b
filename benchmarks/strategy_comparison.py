#!/usr/bin/env python
"""Query strategies compared on real tissue: learning curves on the Kather tiles.

Converts the Kather et al. (2016) colorectal tiles in ../shared/data/kather
(CC BY 4.0) to records (one scale, 64 px), then runs the same simulated
active-learning schedule, from the same seed and the same initial labelled
set, once per strategy with the small backbone, and draws all curves in one
learning_curve.png. Slides 01-05 and 07 train, 09-10 validate, 06 and 08 test;
the "empty" class is left out (nearly all of it comes from one slide).

    python benchmarks/strategy_comparison.py [--strategies class_ratio entropy random] [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import plots  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.model import ModelSpec  # noqa: E402
from utils.tile_folders import write_tile_folder_records  # noqa: E402
from utils.training import TrainOptions, read_rounds, run_training  # noqa: E402

KATHER = Path(__file__).resolve().parents[2] / "shared" / "data" / "kather"
TILE = 64  # the 150-px tiles at 0.495 µm/px are resized to this


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=["class_ratio", "entropy", "random"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--initial", type=int, default=20, help="initial labelled tiles per class")
    parser.add_argument("--budget", type=int, default=40, help="tiles labelled per round")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, help="keep the runs and the figure here (default: a temporary folder)")
    args = parser.parse_args()
    if not KATHER.exists():
        sys.exit(f"{KATHER} is not available")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.output or Path(tmp)
        names = write_tile_folder_records(KATHER, root / "records", TILE, 150 * 0.495 / TILE, r"(CRC-Prim-HE-\d+)", skip=("08_EMPTY",))
        config = load_config(classes=[{"name": n, "color": "#808080"} for n in names], rules=[], priority=[],
                             magnifications=[10], tile_size=TILE)
        split = root / "split.json"
        slide = "CRC-Prim-HE-{:02d}".format
        split.write_text(json.dumps({"train": [slide(i) for i in (1, 2, 3, 4, 5, 7)],
                                     "val": [slide(9), slide(10)], "test": [slide(6), slide(8)]}))
        curves, seconds = {}, {}
        for strategy in args.strategies:
            started = time.perf_counter()
            run = root / "runs" / strategy
            options = TrainOptions(
                data=root / "records", output=run, spec=ModelSpec("small", 64), backbone_weights=None,
                strategy=strategy, rounds=args.rounds, initial=args.initial, budget=args.budget,
                epochs=args.epochs, batch_size=32, optimizer="adam", learning_rate=2e-3, slide_class_cap=None,
                split_file=split, seed=args.seed, mc_passes=8,
            )
            # A fresh process per strategy: the seeded round 0 is then the same for all.
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                pool.apply(run_training, (options, config))
            curves[strategy] = read_rounds(run / "rounds.csv")
            seconds[strategy] = time.perf_counter() - started
        plots.learning_curve(curves, root / "learning_curve.png")
        print(f"\n{'strategy':26s}" + "".join(f"{int(r['labelled']):>8d}" for r in curves[args.strategies[0]])
              + "   seconds")
        for strategy, rows in curves.items():
            print(f"{strategy:26s}" + "".join(f"{float(r['test_macro_f1']):8.3f}" for r in rows)
                  + f"   {seconds[strategy]:7.0f}")
        print(f"(test macro F1 per round; header: labelled tiles)\nfigure: {root / 'learning_curve.png'}")


if __name__ == "__main__":
    main()

"""``--repeats``: the same run several times with consecutive seeds, and
the spread of the kept models' test F1 (the original code reported 4 runs)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from utils.common.config import Config
from utils.common.errors import InputError
from utils.common.io import write_table
from utils.common.log import info
from utils.learning.run_files import STATE_FILE
from utils.learning.train_options import TrainOptions
from utils.learning.training import run_training


def run_repeats(options: TrainOptions, config: Config) -> list[dict[str, Any]]:
    """The same run ``options.repeats`` times with seeds seed, seed + 1, ... (the
    original code reported 4 runs), each in ``OUTPUT/repeat_<k>/``; returns
    and writes to ``OUTPUT/repeats.csv`` the kept round of each, and prints
    the mean and standard deviation of its test macro F1."""
    if options.query_only:
        raise InputError("--repeats simulates rounds; it cannot be combined with --query-only")
    results, repeats = [], options.repeats
    for k in range(repeats):
        info(f"== repeat {k + 1} of {repeats} (seed {options.seed + k})")
        out = options.output / f"repeat_{k}"
        repeat = replace(options, output=out, seed=options.seed + k,
                         data_seed=options.seed if options.repeats_share_data else None,
                         resume=options.resume and (out / STATE_FILE).exists())
        state = run_training(repeat, config)
        kept = next(row for row in state.rows if row["round"] == state.best["round"])
        results.append({"repeat": k, "seed": repeat.seed, "kept_round": kept["round"], "labelled": kept["labelled"],
                        "test_macro_f1": kept["test_macro_f1"], "test_accuracy": kept["test_accuracy"],
                        "last_round_test_macro_f1": state.rows[-1]["test_macro_f1"]})
    write_table(options.output / "repeats.csv", results)
    scores = np.array([r["test_macro_f1"] for r in results], float)
    spread = f" ± {scores.std(ddof=1):.3f} (mean ± sd)" if len(scores) > 1 else ""
    info(f"{repeats} repeat(s): test macro F1 of the kept models {np.nanmean(scores):.3f}{spread}; "
         f"{options.output / 'repeats.csv'}")
    return results

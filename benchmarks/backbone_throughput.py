#!/usr/bin/env python
"""Inference throughput of each backbone, as triplets per second and as a ratio to VGG16.

The texture backbone must not make inference slower than the paper's VGG16:
each backbone's TRI-CNN (random weights, the paper's head) predicts the same
batches of random 0-255 triplets at the paper's 128 px, through the same
compiled function inference uses (:class:`utils.network.model.Predictor`); the best
of a few passes counts, and the ratios are measured in one run, since the
machine is noisy. On a CPU the filter bank's percentiles (a sort of every
response map) cost more than its convolutions.

    python benchmarks/backbone_throughput.py                 # about 2 minutes on 2 CPU cores
    python benchmarks/backbone_throughput.py --tile-size 64 --backbones texture small
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.startup import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()  # without TensorFlow's start-up notes, as the scripts load it
import tensorflow as tf  # noqa: E402

from utils.common.config import load_config  # noqa: E402
from utils.network.model import Predictor, build_model  # noqa: E402
from utils.network.model_spec import BACKBONES, ModelSpec  # noqa: E402


def triplets_per_second(backbone: str, tile_size: int, batch: int, batches: int, repeats: int) -> float:
    config = load_config(tile_size=tile_size)
    model = build_model(config, ModelSpec(backbone), None)
    predictor = Predictor(model)
    rng = np.random.default_rng(0)
    inputs = {name: tf.constant(rng.uniform(0, 255, (batch, tile_size, tile_size, 3)), tf.float32)
              for name in config.scales.names}
    predictor.probabilities(inputs)  # tracing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            predictor.probabilities(inputs)
        best = min(best, time.perf_counter() - started)
    return batch * batches / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["vgg16", "texture", "texture+small", "small"],
                        choices=BACKBONES)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    rates = {b: triplets_per_second(b, args.tile_size, args.batch_size, args.batches, args.repeats)
             for b in args.backbones}
    reference = rates.get("vgg16")
    print(f"\n{args.tile_size}-px triplets, batch {args.batch_size}, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads")
    print("| backbone | triplets/s | × VGG16 |\n|---|---|---|")
    for name, rate in rates.items():
        ratio = f"{rate / reference:.1f}" if reference else "—"
        print(f"| {name} | {rate:.1f} | {ratio} |")


if __name__ == "__main__":
    main()

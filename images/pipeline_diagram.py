#!/usr/bin/env python
"""Draw images/pipeline.png, the data-flow diagram of the README.

    python images/pipeline_diagram.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

DATA = "#E8F0FA"
SCRIPT = "#FCE9D9"
HUMAN = "#E6F4E4"


def box(ax, x, y, w, h, title, body, colour):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=colour, edgecolor="#555555", linewidth=1.2))
    ax.text(x + w / 2, y + h - 0.17, title, ha="center", va="top", fontsize=10.5, fontweight="bold")
    ax.text(x + w / 2, y + h - 0.47, body, ha="center", va="top", fontsize=8.3, linespacing=1.35)


def arrow(ax, start, end, text="", curve=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, linewidth=1.3,
                                 color="#333333", connectionstyle=f"arc3,rad={curve}"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", fontsize=8,
                style="italic", color="#333333")


def main() -> None:
    fig, ax = plt.subplots(figsize=(13, 6.6))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 6.6)
    ax.axis("off")
    box(ax, 0.2, 3.2, 2.6, 2.1, "Slides + annotations",
        "any format OpenSlide opens\nQuPath GeoJSON,\nASAP or Aperio XML\n(source or target lab)", DATA)
    box(ax, 3.4, 3.2, 3.0, 2.1, "tfrecord_generator.py",
        "µm/px, tissue mask, class rules\nlabel = class covering 70%\ntriplet: 40x | 10x | 2.5x\nsame centre, 128 px each", SCRIPT)
    box(ax, 7.0, 3.2, 2.4, 2.1, "tiles/",
        "<slide>.tfrecord\n<slide>.summary.json\nlabelled tiles + pool (-1)", DATA)
    box(ax, 10.0, 3.2, 2.8, 2.1, "active_learning_train.py",
        "TRI-CNN (3 x VGG16) from\nsource weights (--weights)\nround 0: fit initial labels\nround k: query, label, fit", SCRIPT)
    box(ax, 10.0, 0.3, 2.8, 2.1, "runs/<name>/",
        "model.keras (+ its config)\nrounds.csv, learning curve\nconfusion matrix\nqueries/round_<k>/", DATA)
    box(ax, 6.2, 0.3, 3.2, 2.1, "active_learning_inference.py",
        "every tissue tile, same geometry\nbatched, block reads\nundefined < 0.6\ndamaged kept at >= 0.9", SCRIPT)
    box(ax, 0.2, 0.3, 5.4, 2.1, "maps/<slide>/",
        "tissue_map.png + legend, overlay.png\nprobabilities.npz (re-threshold without the model)\n"
        "tissue_map.geojson (open in QuPath)\nsummary.json: mm² and % of tissue per class", DATA)
    arrow(ax, (2.8, 4.25), (3.4, 4.25))
    arrow(ax, (6.4, 4.25), (7.0, 4.25))
    arrow(ax, (9.4, 4.25), (10.0, 4.25))
    arrow(ax, (11.4, 3.2), (11.4, 2.4))
    arrow(ax, (10.0, 1.35), (9.4, 1.35))
    arrow(ax, (6.2, 1.35), (5.6, 1.35))
    ax.add_patch(FancyBboxPatch((5.2, 5.95), 3.4, 0.45, boxstyle="round,pad=0.02", facecolor=HUMAN,
                                edgecolor="#555555"))
    ax.text(6.9, 6.17, "pathologist labels the queries in QuPath", ha="center", va="center", fontsize=8.5)
    arrow(ax, (11.4, 5.3), (8.6, 6.17), curve=0.2)
    arrow(ax, (5.2, 6.17), (1.5, 5.3), curve=0.2)
    ax.text(6.9, 5.62, "annotation mode: --query-only, then extract again and --resume", ha="center",
            fontsize=8, style="italic", color="#333333")
    out = Path(__file__).with_name("pipeline.png")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(out)


if __name__ == "__main__":
    main()

"""Figures of a training run: learning curve, loss/accuracy curves with round
boundaries, confusion matrix, and contact sheets of queried tiles.

Figures are :class:`matplotlib.figure.Figure` objects drawn straight to PNG,
never through pyplot: no process-wide backend is chosen, no window can open
on a desktop, and no figure stays in pyplot's registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from utils.io import atomic_path


def save(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """The figure as a PNG, written atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def learning_curve(runs: dict[str, list[dict]], path: str | Path, metric: str = "test_macro_f1") -> None:
    """Macro F1 against labelled tiles, one line per run (e.g. per strategy)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, rows in runs.items():
        x = [int(r["labelled"]) for r in rows]
        y = [float(r[metric]) if r[metric] not in ("", None) else np.nan for r in rows]
        ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel("labelled tiles")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Active learning curve")
    save(fig, path)


def training_curves(history: list[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch over all rounds, with dashed round boundaries."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    epochs = np.arange(1, len(history) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [h[metric] for h in history], label=f"train {metric}")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], label=f"val {metric}")
        rounds = [h["round"] for h in history]
        for i in range(1, len(rounds)):
            if rounds[i] != rounds[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("epoch (all rounds)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path)


def confusion_matrix_plot(matrix: np.ndarray, class_names: list[str], path: str | Path, title: str) -> None:
    fig = Figure(figsize=(1.1 * len(class_names) + 2, 1.1 * len(class_names) + 1.5))
    ax = fig.subplots()
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save(fig, path)


def contact_sheet(triplets: list[list[np.ndarray]], captions: list[str], path: str | Path, columns: int = 4) -> None:
    """A grid of tiles, every scale side by side, each with a caption underneath."""
    if not triplets:
        return
    size = triplets[0][0].shape[0]
    cell_w, cell_h = size * len(triplets[0]) + 8, size + 18
    rows = -(-len(triplets) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (scales, caption) in enumerate(zip(triplets, captions)):
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        for s, tile in enumerate(scales):
            sheet.paste(Image.fromarray(tile), (x + s * size, y))
        draw.text((x + 2, y + size + 3), caption, fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")

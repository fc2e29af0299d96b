"""Figures of a training run: learning curve, loss/accuracy curves with round
boundaries, confusion matrix, and contact sheets of queried tiles.

Figures are :class:`matplotlib.figure.Figure` objects drawn straight to PNG,
never through pyplot: no process-wide backend is chosen, no window can open
on a desktop, and no figure stays in pyplot's registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from utils.common.io import atomic_path


def save(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """The figure as a PNG, written atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def learning_curve(curves: dict[str, list[tuple[int, float]]], path: str | Path) -> None:
    """Test macro F1 against labelled tiles, one line per run (e.g. per
    strategy); each curve is its rounds' (labelled tiles, F1) points."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, points in curves.items():
        labelled, f1 = zip(*points) if points else ((), ())
        ax.plot(labelled, f1, marker="o", label=name)
    ax.set_xlabel("labelled tiles")
    ax.set_ylabel("test macro F1")
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


def contact_sheet(triplets: list[list[np.ndarray]], captions: list[list[str]], heads: list[str], title: str,
                  path: str | Path, columns: int = 4) -> None:
    """A page of tiles, every scale side by side under its column head
    (``heads``, e.g. "40x"), each tile's caption lines underneath, and the
    page's ``title`` on top. Tiles smaller than ``SHEET_TILE_SIDE`` are enlarged
    (nearest neighbour) so that a printed page stays readable."""
    if not triplets:
        return
    size = triplets[0][0].shape[0]
    shown = max(size, SHEET_TILE_SIDE)
    font, bold = sheet_font(15), sheet_font(17)
    line, gap = 20, 4
    step = shown + gap
    widest = max(bold.getlength(text) if n == 0 else font.getlength(text)
                 for lines in captions for n, text in enumerate(lines))
    cell_w = int(max(step * len(triplets[0]), widest + 8)) + 20
    cell_h = line + shown + line * max(len(c) for c in captions) + 16
    header = 2 * line + 12
    rows = -(-len(triplets) // columns)
    sheet = Image.new("RGB", (max(columns * cell_w, int(bold.getlength(title)) + 16), header + rows * cell_h),
                      "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 6), title, fill="black", font=bold)
    for c in range(min(columns, len(triplets))):
        for s, head in enumerate(heads):
            draw.text((c * cell_w + s * step + shown // 2, header - 6), head, fill="black", font=bold, anchor="mb")
    for k, (scales, lines) in enumerate(zip(triplets, captions)):
        x, y = (k % columns) * cell_w, header + (k // columns) * cell_h
        for s, tile in enumerate(scales):
            image = Image.fromarray(tile)
            if shown != size:
                image = image.resize((shown, shown), Image.NEAREST)
            sheet.paste(image, (x + s * step, y))
        for n, text in enumerate(lines):
            draw.text((x + 2, y + shown + 4 + n * line), text, fill="black", font=bold if n == 0 else font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


#: Smallest side a tile is shown at on a contact sheet, in pixels.
SHEET_TILE_SIDE = 128


def sheet_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships, so text reads the same on every machine."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def framed_map(image: np.ndarray, title: str, microns_per_pixel: float,
               legend: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """A map image as a pathologist reads it on its own: ``title`` above, a
    scale bar in its lower left corner, and a legend of ``(name, rgb)`` below."""
    height, width = image.shape[:2]
    size = max(14, width // 90)  # text that stays legible when the whole image is viewed at once
    font, bold = sheet_font(size), sheet_font(size + 2)
    swatch, gap = size + 1, size
    entries = [(name, rgb, int(font.getlength(name))) for name, rgb in legend]
    lines, x = [[]], 0
    for entry in entries:
        step = swatch + 6 + entry[2] + gap
        if x + step > width and lines[-1]:
            lines.append([])
            x = 0
        lines[-1].append(entry)
        x += step
    top, row_height = 2 * size, int(1.6 * size)
    bottom = 12 + row_height * len(lines)
    page = Image.new("RGB", (width, top + height + bottom), "white")
    page.paste(Image.fromarray(np.ascontiguousarray(image)), (0, top))
    draw = ImageDraw.Draw(page)
    draw.text((6, size // 4), title, fill="black", font=bold)
    _scale_bar(draw, 12, top + height - 14, width, microns_per_pixel, font)
    for row, entries_of_row in enumerate(lines):
        x, y = 6, top + height + 8 + row_height * row
        for name, rgb, text_width in entries_of_row:
            draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(int(v) for v in rgb), outline="grey")
            draw.text((x + swatch + 6, y), name, fill="black", font=font)
            x += swatch + 6 + text_width + gap
    return np.asarray(page)


def _scale_bar(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, microns_per_pixel: float,
               font: ImageFont.FreeTypeFont) -> None:
    """A bar of 1, 2 or 5 x 10^k µm, about a fifth of the image wide, black on a white box."""
    target = width / 5 * microns_per_pixel
    if not np.isfinite(target) or target <= 0:
        return
    power = 10 ** np.floor(np.log10(target))
    length = max(m * power for m in (1, 2, 5) if m * power <= target)
    label = f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} µm"
    pixels = int(round(length / microns_per_pixel))
    draw.rectangle((x - 6, y - 2 * font.size, x + max(pixels, int(font.getlength(label))) + 6, y + 8), fill="white")
    draw.rectangle((x, y, x + pixels, y + 4), fill="black")
    draw.text((x, y - 4), label, fill="black", font=font, anchor="ls")

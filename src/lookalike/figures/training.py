"""Training figures: loss curves, reconstruction grids (one per epoch), their animation, the latent space.

Curves and scatters are matplotlib ``Figure``s drawn without pyplot and written by ``plots.save``; the
reconstruction grids are plain image tiles (Pillow), so each epoch costs milliseconds and the frames make
a GIF directly, as the seed autoencoder's did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .plots import categories_for, palette


def loss_figure(train: Sequence[float], val: Sequence[float], title: str = "", best_epoch: int = -1):
    """Training and validation loss per epoch, the kept (best) epoch marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, marker="o", markersize=3, label="training")
    if len(val):
        ax.plot(epochs[: len(val)], val, marker="o", markersize=3, label="validation")
    if best_epoch >= 0:
        ax.axvline(best_epoch + 1, color="#888888", linestyle=":", label=f"kept: epoch {best_epoch + 1}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.set_layout_engine("constrained")
    return fig


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, caption: str = "",
                        scale: int = 1) -> Image.Image:
    """Originals on the top row, reconstructions below; both uint8 N x S x S x 3."""
    n, s = originals.shape[0], originals.shape[1]
    cell = s * scale
    pad, top = 2, 14 if caption else 0
    grid = Image.new("RGB", (n * (cell + pad) + pad, 2 * (cell + pad) + pad + top), (255, 255, 255))
    for row, images in enumerate((originals, reconstructions)):
        for i in range(n):
            tile = Image.fromarray(images[i])
            if scale != 1:
                tile = tile.resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (pad + i * (cell + pad), top + pad + row * (cell + pad)))
    if caption:
        ImageDraw.Draw(grid).text((pad, 1), caption, fill=(0, 0, 0))
    return grid


def save_gif(frames: Sequence[Path], out: Path, ms_per_frame: int = 400) -> Path:
    """The per-epoch grids as one looping animation (the last frame held longer)."""
    images = [Image.open(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 4]
    images[0].save(out, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False)
    return out


def latent_figure(latent: np.ndarray, values: Sequence[str | None] | None = None, title: str = "",
                  colour_by: str = "", top: int = 12):
    """A 2-d or 3-d latent space as a scatter, coloured by a label when there is one."""
    from matplotlib.figure import Figure

    dims = latent.shape[1]
    if dims not in (2, 3):
        raise ValueError("a latent scatter needs a 2- or 3-dimensional latent")
    fig = Figure(figsize=(8, 6))
    ax = fig.add_subplot(projection="3d" if dims == 3 else None)
    values = list(values) if values is not None else [None] * len(latent)
    entries, order = categories_for(values, top)
    colours = palette(order)
    entries_arr = np.array(entries, dtype=object)
    for entry in order:
        sel = entries_arr == entry
        ax.scatter(*latent[sel].T, s=12, color=colours[entry], label=f"{entry} ({sel.sum()})")
    ax.set_title(title)
    if colour_by or any(v is not None for v in values):
        ax.legend(title=colour_by or None, fontsize=7, loc="center left", bbox_to_anchor=(1.05, 0.5), frameon=False)
    return fig

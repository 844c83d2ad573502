"""Pictures of the severity index: a heat-map overlay per image (the face, its normalised version,
the heat map over the face) and a summary plot of a scored set.

Heat maps are drawn on one fixed scale per picture set (``vmax``), so colours compare across
overlays; small images are enlarged (nearest neighbour) so their pixels stay visible.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

MIN_PANEL = 192  # pixels: panels are enlarged to at least this
OVERLAY_ALPHA = 0.6  # weight of the heat colour where the heat map is at vmax


def _colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8 (matplotlib's inferno)."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def overlay(image: np.ndarray, heat: np.ndarray, vmax: float) -> np.ndarray:
    """The heat map [H, W] over the face (uint8 [H, W, C]), stronger where the heat is: uint8 [H, W, 3]."""
    t = np.clip(heat / max(vmax, 1e-12), 0, 1)[..., None]
    face = _rgb(image).astype(np.float32)
    return np.clip(face * (1 - OVERLAY_ALPHA * t) + _colormap(t[..., 0]) * (OVERLAY_ALPHA * t), 0, 255).astype(np.uint8)


def overlay_png(image: np.ndarray, normalised: np.ndarray, heat: np.ndarray, vmax: float, title: str) -> bytes:
    """Four panels side by side (face | normalised | heat map | heat map over the face) under a title
    line; the heat map alone shows where a faint difference lies, the overlay what it lies on."""
    heat_only = _colormap(np.clip(heat / max(vmax, 1e-12), 0, 1))
    panels = np.concatenate([_rgb(image), _rgb(normalised), heat_only, overlay(image, heat, vmax)], axis=1)
    h, w = panels.shape[:2]
    scale = max(1, math.ceil(MIN_PANEL / h))
    pic = Image.fromarray(panels).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (pic.width, pic.height + 18), (255, 255, 255))
    canvas.paste(pic, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def summary_png(
    scores: np.ndarray,  # [N]
    projection_loss: np.ndarray,  # [N]
    tiles: list[tuple[str, np.ndarray, np.ndarray]],  # (label, face uint8 [H, W, C], heat [H, W]) to show
    vmax: float,
    title: str,
) -> bytes:
    """The score histogram, projection loss against score (a badly reproduced face scores high for
    the wrong reason: look at the top right), and a grid of heat-map overlays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(1, min(len(tiles), 4))
    rows = math.ceil(len(tiles) / cols) if tiles else 0
    fig = plt.figure(figsize=(11, 4.2 + 2.6 * rows))
    grid = fig.add_gridspec(1 + rows, 2 * cols, height_ratios=[1.6] + [1] * rows)
    ax = fig.add_subplot(grid[0, :cols])
    ax.hist(scores, bins=min(40, max(5, len(scores) // 4)))
    ax.set_xlabel("severity index")
    ax.set_ylabel("images")
    ax.set_title(f"{len(scores)} images: median {np.median(scores):.4g}, max {np.max(scores):.4g}")
    ax = fig.add_subplot(grid[0, cols:])
    ax.scatter(projection_loss, scores, s=8, alpha=0.6)
    ax.set_xlabel("projection loss (reconstruction)")
    ax.set_ylabel("severity index")
    ax.set_title("score vs how well the face was reproduced")
    for i, (label, face, heat) in enumerate(tiles):
        ax = fig.add_subplot(grid[1 + i // cols, 2 * (i % cols) : 2 * (i % cols) + 2])
        ax.imshow(overlay(face, heat, vmax))
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()

"""What a snapshot shows people: a sample grid from fixed seeds and training curves, as PNGs."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from cleftgan_hpc.model.generate import make_grid, seed_to_z, to_uint8


@torch.no_grad()
def sample_grid(G_ema: torch.nn.Module, seeds: int, device: torch.device) -> bytes:
    """PNG of G_ema's images for seeds 0..seeds-1 (z as the reference draws it; class = seed mod c_dim)."""
    z = torch.from_numpy(np.concatenate([seed_to_z(s, G_ema.z_dim) for s in range(seeds)])).float().to(device)
    c = None
    if G_ema.c_dim:
        c = torch.zeros([seeds, G_ema.c_dim], device=device)
        c[torch.arange(seeds), torch.arange(seeds) % G_ema.c_dim] = 1
    images = np.concatenate(
        [to_uint8(G_ema(z[i : i + 8], None if c is None else c[i : i + 8])) for i in range(0, seeds, 8)]
    )
    grid = make_grid(images, cols=math.ceil(math.sqrt(seeds)))
    buf = io.BytesIO()
    Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(buf, format="PNG")
    return buf.getvalue()


def curves_png(stats: list[dict[str, float]], metrics: list[dict[str, float]]) -> bytes:
    """Losses, R1, ADA p (and metrics when present) against kimg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("losses", ["loss_G", "loss_D"]),
        ("D scores", ["scores_real", "scores_fake"]),
        ("regularisers", ["r1_penalty", "pl_penalty"]),  # pl: StyleGAN2 only
        ("augment p", ["augment_p"]),
    ]
    names = sorted({k for m in metrics for k in m if k != "kimg"})
    if names:
        panels.append(("metrics", names))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True)
    for ax, (title, keys) in zip(np.atleast_1d(axes), panels, strict=True):
        source = metrics if title == "metrics" else stats
        for k in keys:
            pts = [(s["kimg"], s[k]) for s in source if k in s]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=k, marker="o" if title == "metrics" else None, ms=3)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("kimg")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()

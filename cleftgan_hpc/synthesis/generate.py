"""Seeded, batched sampling: (network, seed, psi, class) -> uint8 image, the same on every call.

z comes from ``np.random.RandomState(seed).randn(1, z_dim)`` exactly as the reference's image
script does; a drawn class label comes from a second generator seeded with (seed, LABEL_STREAM)
so that adding labels never changes z.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.model.generate import seed_to_z, to_uint8

LABEL_STREAM = 0x6C61  # 'la': the second seed word of the label generator


def load_generator(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The generator to sample from (G_ema when the file has one), in eval mode on ``device``."""
    from cleftgan_hpc.model import load_network

    g = load_network(path).generator()
    return g.to(device).eval().requires_grad_(False)


def network_info(g: Any) -> dict[str, Any]:
    """The generator's hyperparameters, for the manifest."""
    return {
        "z_dim": int(g.z_dim),
        "c_dim": int(g.c_dim),
        "img_resolution": int(g.img_resolution),
        "img_channels": int(g.img_channels),
        "init_kwargs": g.init_kwargs,
    }


def check_labels(labels: int | str | list[float] | None, c_dim: int) -> None:
    """Refuse labels that do not fit the network, with what to change."""
    if c_dim == 0 and labels is not None:
        raise CleftGanError(f"labels {labels!r} given, but the network is unconditional: drop labels")
    if c_dim > 0 and labels is None:
        raise CleftGanError(
            f"the network is conditional ({c_dim} classes): set labels to a class index, 'uniform' or weights"
        )
    if isinstance(labels, int) and not isinstance(labels, bool) and labels >= c_dim:
        raise CleftGanError(f"labels: class {labels} is out of range: the network has classes 0..{c_dim - 1}")
    if isinstance(labels, list) and len(labels) != c_dim:
        raise CleftGanError(f"labels: {len(labels)} weights given, but the network has {c_dim} classes")


def class_for_seed(seed: int, labels: int | str | list[float] | None, c_dim: int) -> int | None:
    """The class of a seed's image: fixed, or drawn from its own generator (pure in the seed)."""
    if labels is None or c_dim == 0:
        return None
    if isinstance(labels, int):
        return labels
    weights = np.ones(c_dim) if labels == "uniform" else np.asarray(labels, dtype=np.float64)
    cdf = np.cumsum(weights / weights.sum())
    u = np.random.default_rng([seed, LABEL_STREAM]).random()
    return int(min(np.searchsorted(cdf, u, side="right"), c_dim - 1))


@torch.no_grad()
def generate_batch(
    g: Any,  # Generator (eval mode, on ``device``)
    seeds: Sequence[int],  # one image per seed
    classes: Sequence[int | None],  # class per seed (None: unconditional)
    truncation_psi: float,
    truncation_cutoff: int | None,
    device: str,
) -> np.ndarray:  # [N, H, W, C] uint8
    z = torch.from_numpy(np.concatenate([seed_to_z(s, g.z_dim) for s in seeds])).float().to(device)  # [N, z_dim]
    c = None
    if g.c_dim > 0:
        c = torch.zeros([len(seeds), g.c_dim], device=device)  # [N, c_dim] one-hot
        for i, k in enumerate(classes):
            c[i, int(k)] = 1  # type: ignore[arg-type]
    img = g(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)  # [N, C, H, W]
    return to_uint8(img)


def image_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

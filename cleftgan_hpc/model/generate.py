"""Sampling images from a generator: seeds -> z (as the reference does), transforms, PNG output."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import CleftGanError
from .generator import Generator

__all__ = ["GenerateError", "generate_images", "make_grid", "make_transform", "parse_seeds", "save_images"]


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad seed range {part!r} (expected e.g. 0-15 or 1,5,9)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: end before start")
        if hi >= 2**32:
            raise ValueError(f"seed {hi} is out of range (seeds are < 2**32)")
        seeds.extend(range(lo, hi + 1))
        if len(seeds) > 1_000_000:
            raise ValueError("more than a million seeds: split the job")
    return seeds


class GenerateError(CleftGanError):
    """A generate request does not fit the network (class label, output path...)."""


def seed_to_z(seed: int, z_dim: int) -> np.ndarray:
    """The reference's latent for a seed: np.random.RandomState(seed).randn(1, z_dim)."""
    return np.random.RandomState(seed).randn(1, z_dim)


def make_transform(translate: tuple[float, float], angle_deg: float) -> np.ndarray:
    """The user's 3x3 transform (rotate, then translate, in image units) as the reference's scripts build it."""
    s, c = math.sin(angle_deg / 360 * 2 * math.pi), math.cos(angle_deg / 360 * 2 * math.pi)
    return np.array([[c, s, translate[0]], [-s, c, translate[1]], [0, 0, 1]], dtype=np.float64)


def set_transform(g: Generator, translate: tuple[float, float] = (0.0, 0.0), rotate: float = 0.0) -> None:
    """Store the inverse of the user's transform in G.synthesis.input.transform (StyleGAN3 only:
    a StyleGAN2 generator has no such input, so it takes only the identity)."""
    if not hasattr(g.synthesis, "input"):
        if tuple(translate) != (0.0, 0.0) or rotate != 0:
            raise GenerateError("--translate/--rotate need a StyleGAN3 network; this one is StyleGAN2")
        return
    m = np.linalg.inv(make_transform(translate, rotate))
    g.synthesis.input.transform.copy_(torch.from_numpy(m).to(g.synthesis.input.transform))


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] floats in about [-1, 1] -> [N, H, W, C] uint8, as the reference rounds."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate_images(
    g: Generator,  # the generator (G_ema)
    seeds: Sequence[int],  # one image per seed
    truncation_psi: float = 1.0,  # truncation strength
    class_idx: int | None = None,  # class label for conditional networks
    truncation_cutoff: int | None = None,  # truncate only the first ws
    batch_size: int = 8,  # images per forward pass
    device: str | torch.device = "cpu",  # where to run
) -> np.ndarray:  # [len(seeds), H, W, C] uint8
    """Images for seeds; z from RandomState(seed), c one-hot of class_idx."""
    if g.c_dim > 0:
        if class_idx is None:
            raise GenerateError(f"this network is conditional ({g.c_dim} classes): pass --class K")
        if not 0 <= class_idx < g.c_dim:
            raise GenerateError(f"--class {class_idx} is out of range: the network has classes 0..{g.c_dim - 1}")
    elif class_idx is not None:
        raise GenerateError("--class given, but this network is unconditional")
    g = g.to(device).eval()
    out = []
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i : i + batch_size]
        z = torch.from_numpy(np.concatenate([seed_to_z(s, g.z_dim) for s in chunk])).float().to(device)
        c = None
        if g.c_dim > 0:
            c = torch.zeros([len(chunk), g.c_dim], device=device)
            c[:, class_idx] = 1
        img = g(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        out.append(to_uint8(img))
    return np.concatenate(out)


def make_grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """[N, H, W, C] -> one [rows*H, cols*W, C] image, filled row by row (black where empty)."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros([rows * h, cols * w, c], dtype=images.dtype)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = im
    return grid


def _pil(im: np.ndarray) -> Image.Image:
    return Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im, "L" if im.shape[2] == 1 else "RGB")


def save_images(images: np.ndarray, seeds: Sequence[int], out: str | os.PathLike[str]) -> list[Path]:
    """A path ending in .png gets one grid; anything else is a directory of seedNNNN.png files."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        _pil(make_grid(images)).save(out)
        return [out]
    if out.exists() and not out.is_dir():
        raise GenerateError(f"--out {out} exists and is not a directory (use a .png name for a grid)")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, im in zip(seeds, images, strict=True):
        p = out / f"seed{seed:04d}.png"
        _pil(im).save(p)
        paths.append(p)
    return paths

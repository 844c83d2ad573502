"""Test doubles for the severity index: aligned demo faces, and a generator of normal faces
that really can draw them.

A GAN trained on faces takes far too long for a test, and a random tiny StyleGAN3 draws noise,
which cannot show whether the index finds a cleft. ``LinearFaces`` is a linear generator (the
mean and principal components of demo faces drawn without a notch) with the interface the
index uses (``mapping``, ``synthesis``, ``num_ws``...): it draws normal faces well and cannot
draw a notch from its latents, which is what the paper's normal-face StyleGAN2 is for. Its
weights (mean image and components) are parameters, so model adaptation can tune them, and
could learn the notch if nothing held it back.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from cleftgan_hpc.data.align import align_face, standardise_background
from cleftgan_hpc.data.demo_faces import draw_face, face_rng

DRAW_SIZE = 128  # demo photos are drawn at this size, then aligned FFHQ-style
RES = 128  # the tests' faces: at 32 or 64 px the notch is a pixel or two wide; at 128 it is several
FACES = 3  # faces drawn at each severity


def aligned_face(seed: int, index: int, resolution: int, severity: float) -> np.ndarray:
    """Demo face (seed, index) with the given notch severity, aligned to ``resolution`` with a grey
    background: uint8 [H, W, 3]. The same (seed, index) draws the same face at any severity."""
    face = draw_face(face_rng(seed, index), DRAW_SIZE, severity)
    img, lm = align_face(face.image, face.landmarks, resolution)
    return np.asarray(standardise_background(img, lm, "solid"))


@lru_cache(maxsize=4)
def normal_faces(count: int, resolution: int, seed: int = 1000) -> np.ndarray:
    """``count`` aligned demo faces without a notch, uint8 [N, H, W, 3] (cached per process)."""
    return np.stack([aligned_face(seed, i, resolution, 0.0) for i in range(count)])


class _Mapping(torch.nn.Module):
    def __init__(self, z_dim: int, num_ws: int) -> None:
        super().__init__()
        self.z_dim, self.num_ws = z_dim, num_ws
        self.register_buffer("w_avg", torch.zeros(z_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        return z.to(torch.float32)[:, None].repeat(1, self.num_ws, 1)  # w = z: unit-variance coefficients


class _Synthesis(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, num_ws: int) -> None:
        super().__init__()
        self.mean = torch.nn.Parameter(mean)  # [C, H, W] in [-1, 1]
        self.basis = torch.nn.Parameter(basis)  # [K, C, H, W], scaled by each component's spread
        self.num_ws, self.w_dim = num_ws, basis.shape[0]

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", **_: object) -> torch.Tensor:
        w = ws.mean(dim=1)  # the layers' ws averaged: W+ has no more freedom than W here
        return self.mean[None] + torch.einsum("nk,kchw->nchw", w, self.basis)


class LinearFaces(torch.nn.Module):
    """G.mapping(z, c) -> ws [N, num_ws, K]; G.synthesis(ws) -> images [N, 3, H, W] in about [-1, 1]."""

    def __init__(self, faces: np.ndarray, components: int = 24, num_ws: int = 4) -> None:
        super().__init__()
        x = torch.from_numpy(faces).permute(0, 3, 1, 2).to(torch.float64) / 127.5 - 1  # [N, C, H, W]
        n = x.shape[0]
        mean = x.mean(dim=0)
        flat = (x - mean).reshape(n, -1)
        _, s, vh = torch.linalg.svd(flat, full_matrices=False)
        spread = s[:components] / (n - 1) ** 0.5
        basis = (vh[:components] * spread[:, None]).reshape(components, *x.shape[1:])
        self.z_dim = self.w_dim = components
        self.c_dim, self.num_ws = 0, num_ws
        self.img_resolution, self.img_channels = int(x.shape[2]), int(x.shape[1])
        self.mapping = _Mapping(components, num_ws)
        self.synthesis = _Synthesis(mean.float(), basis.float(), num_ws)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        return self.synthesis(self.mapping(z, c))


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> uint8 [N, C, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def save_png(path: str, image: np.ndarray) -> None:  # for looking at a failing case by hand
    Image.fromarray(image).save(path)


def small_options(**kw: Any) -> Any:
    """The default options with fewer steps (the tests' generator converges fast)."""
    from cleftgan_hpc.jobspec.kinds.severity import SeverityIndexOptions

    base: dict[str, Any] = {"projection": {"steps": 60, "w_avg_samples": 500}, "adaptation": {"steps": 5}}
    for k, v in kw.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    return SeverityIndexOptions.model_validate(base)

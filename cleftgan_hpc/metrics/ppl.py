"""Perceptual path length (PPL): how much the image changes for a small step in latent space.

StyleGAN3 convention: per sample draw z0, z1 ~ N(0, I) (and, for a conditional generator, one
real label c shared by both) and t (0 for sampling "end", U(0, 1) for "full"). In space "w",
w0 = mapping(z0, c) and w1 = mapping(z1, c) without truncation, and the two points are
lerp(w0, w1, t) and lerp(w0, w1, t + eps); in space "z" they are slerp(z0, z1, t) and
slerp(z0, z1, t + eps), mapped afterwards. Both are synthesised, optionally cropped to the face
centre (rows 3H/8..7H/8, columns 2W/8..6W/8), box-downsampled by H // 256 when taller than
256, scaled to [0, 255], and the sample's length is LPIPS(a, b) / eps^2. PPL is the mean of
the lengths between the 1st percentile (numpy "lower") and the 99th ("higher").

Every draw of sample i comes from a CPU generator seeded by ``derive_seed("ppl", seed, i)``,
so the lengths do not depend on batch size or device (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from cleftgan_hpc.context import StopRequested
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics.lpips import LPIPSNet
from cleftgan_hpc.seeds import derive_seed

LPIPS_MAX_RESOLUTION = 256  # taller images are box-downsampled by an integer factor first


@dataclass(frozen=True)
class PPLSettings:
    epsilon: float = 1e-4  # step between the two points of a sample
    space: Literal["w", "z"] = "w"  # where to interpolate
    sampling: Literal["end", "full"] = "end"  # t = 0, or t ~ U(0, 1)
    crop: bool = False  # keep only the face centre (the FFHQ convention)

    def __post_init__(self) -> None:
        # checked here so a bad value fails where the settings are made, not mid-run
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise CleftGanError(f"PPL epsilon must be a positive number, got {self.epsilon}")
        if self.space not in ("w", "z"):
            raise CleftGanError(f"PPL space must be 'w' or 'z', got {self.space!r}")
        if self.sampling not in ("end", "full"):
            raise CleftGanError(f"PPL sampling must be 'end' or 'full', got {self.sampling!r}")


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the directions of ``a`` and ``b`` [N, D] at ``t`` [N, 1]."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    cos = (a * b).sum(dim=-1, keepdim=True).clamp(-1, 1)  # rounding can step just past +-1
    ortho = b - cos * a  # the part of b orthogonal to a: the direction of travel
    ortho = ortho / ortho.norm(dim=-1, keepdim=True)
    angle = t * torch.acos(cos)
    out = a * torch.cos(angle) + ortho * torch.sin(angle)
    return out / out.norm(dim=-1, keepdim=True)


def _draws(
    seed: int, start: int, n: int, z_dim: int, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """z0, z1 [n, z_dim], t [n] and labels [n, c_dim] (or None) of samples start .. start + n - 1."""
    z0, z1, t, idx = [], [], [], []
    for i in range(start, start + n):
        g = torch.Generator().manual_seed(derive_seed("ppl", seed, i))
        # fixed draw order; t is drawn for "end" too, so z and labels are the same for both modes
        z0.append(torch.randn([z_dim], generator=g))
        z1.append(torch.randn([z_dim], generator=g))
        t.append(torch.rand([], generator=g))
        if labels is not None:
            idx.append(int(torch.randint(len(labels), [], generator=g)))
    c = labels[idx] if labels is not None else None
    return torch.stack(z0), torch.stack(z1), torch.stack(t), c


def _prepare(images: torch.Tensor, crop: bool) -> torch.Tensor:
    """Generator output in [-1, 1] -> cropped, downsampled and scaled to [0, 255] for LPIPS.
    The downsampling factor comes from the full image size, crop or not (the convention: a
    1024 px network is measured at 1024 / 4, so its crop at 128 px)."""
    factor = images.shape[2] // LPIPS_MAX_RESOLUTION
    if crop:
        c = images.shape[2] // 8
        images = images[:, :, c * 3 : c * 7, c * 2 : c * 6]
    if factor > 1:
        images = F.avg_pool2d(images, factor)  # box filter: each output pixel is a block mean
    return (images + 1) * (255 / 2)


def path_lengths(
    G: torch.nn.Module,
    lpips: LPIPSNet,
    num_samples: int,
    settings: PPLSettings,
    *,
    first: int = 0,
    batch: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    labels: np.ndarray | None = None,
    on_samples: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """The path lengths of samples ``first .. first + num_samples - 1``, float64 [num_samples].
    Sample i depends only on (seed, i), so a long measurement can be taken in pieces.

    ``G`` must already be on ``device`` (and in eval mode, as G_ema is). ``labels`` [K, c_dim]
    are the real labels a conditional ``G`` draws from; they are ignored when ``G.c_dim`` is 0.
    ``on_samples(n)`` is called after each batch of n samples; when ``should_stop()`` is true
    before a batch, ``StopRequested`` is raised.
    """
    if num_samples < 1 or first < 0:
        raise CleftGanError(f"PPL needs num_samples >= 1 and first >= 0, got {num_samples}, {first}")
    if batch < 1:
        raise CleftGanError(f"PPL batch must be >= 1, got {batch}")
    c_dim = int(getattr(G, "c_dim", 0))
    label_table: torch.Tensor | None = None
    if c_dim > 0:
        if labels is None:
            raise CleftGanError(f"the generator is conditional (c_dim {c_dim}): PPL needs the dataset's labels")
        arr = np.asarray(labels, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != c_dim or len(arr) == 0:
            raise CleftGanError(f"PPL labels must be [K >= 1, {c_dim}], got {list(arr.shape)}")
        label_table = torch.from_numpy(arr)
    dev = torch.device(device)
    eps = float(settings.epsilon)
    out = np.empty(num_samples, dtype=np.float64)
    with torch.no_grad():
        for start in range(0, num_samples, batch):
            if should_stop is not None and should_stop():
                raise StopRequested(f"PPL stopped after {start} of {num_samples} samples")
            n = min(batch, num_samples - start)
            z0, z1, t, c = _draws(seed, first + start, n, G.z_dim, label_table)
            t = t if settings.sampling == "full" else torch.zeros_like(t)
            z0, z1, t = z0.to(dev), z1.to(dev), t.to(dev)[:, None]
            c = c.to(dev) if c is not None else torch.zeros([n, 0], device=dev)
            cc = torch.cat([c, c])  # one label per sample, shared by both points
            if settings.space == "w":
                w0, w1 = G.mapping(torch.cat([z0, z1]), cc, truncation_psi=1.0).chunk(2)
                t3 = t[:, :, None]  # [n, 1, 1] against ws [n, num_ws, w_dim]
                ws = torch.cat([w0.lerp(w1, t3), w0.lerp(w1, t3 + eps)])
            else:
                zt = torch.cat([_slerp(z0, z1, t), _slerp(z0, z1, t + eps)])
                ws = G.mapping(zt, cc, truncation_psi=1.0)
            # fp32: low precision would drown a 1e-4 step in rounding
            images = _prepare(G.synthesis(ws, force_fp32=True), settings.crop)
            a, b = images.chunk(2)
            out[start : start + n] = (lpips.distance(a, b) / eps**2).double().cpu().numpy()
            if on_samples is not None:
                on_samples(n)
    return out


def kept_range(lengths: np.ndarray) -> tuple[float, float]:
    """The lengths PPL averages: [1st percentile ("lower"), 99th percentile ("higher")]."""
    x = np.asarray(lengths, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise CleftGanError(f"PPL needs a 1-D array of at least 2 path lengths, got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise CleftGanError(f"{bad} of {len(x)} path lengths are NaN or infinite (the generator diverged?)")
    return float(np.percentile(x, 1, method="lower")), float(np.percentile(x, 99, method="higher"))


def ppl_from_lengths(lengths: np.ndarray) -> float:
    """PPL: the mean of the lengths within ``kept_range``."""
    lo, hi = kept_range(lengths)
    x = np.asarray(lengths, dtype=np.float64)
    return float(x[(x >= lo) & (x <= hi)].mean())

"""From an image and its normalised version to a heat map and a score: colour transform,
per-pixel difference, grey-level erosion, reduction to one number.

Images here are float [N, C, H, W] in [0, 1] (C = 1 or 3). The paper (Hayajneh et al. 2023)
names these steps without their settings; ours are options (``SeverityIndexOptions``):

- colour: ITU-R BT.601 full-range YCbCr (JPEG's), which separates brightness (shading, the
  dark gap of a cleft) from chroma (lip-red tissue where skin should be); or plain RGB.
- difference: a weighted sum of the channels' absolute differences, in [0, sum of weights].
- erosion: the minimum over a (2r+1) x (2r+1) square, so that a difference survives only
  where it is at least 2r+1 pixels wide: thin lines where the generator puts an edge a pixel
  or two off vanish, a cleft (tens of pixels at 1024) stays.
- score: the mean of the heat map's largest ``top_fraction`` of pixels (or of all of them),
  optionally inside a box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# BT.601 full range (JFIF): rows give Y, Cb - 0.5, Cr - 0.5 from R, G, B in [0, 1]
_YCBCR = torch.tensor([
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
])
_YCBCR_OFFSET = torch.tensor([0.0, 0.5, 0.5])


def to_ycbcr(images: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3, H, W] in [0, 1] -> YCbCr [N, 3, H, W], each channel in [0, 1]; grey [N, 1, ...] stays Y."""
    if images.shape[1] == 1:
        return images
    m = _YCBCR.to(images.device, images.dtype)
    off = _YCBCR_OFFSET.to(images.device, images.dtype)
    return torch.einsum("ij,njhw->nihw", m, images) + off[None, :, None, None]


def colour_transform(images: torch.Tensor, colour: str) -> torch.Tensor:
    if colour == "ycbcr":
        return to_ycbcr(images)
    if colour == "rgb":
        return images
    raise ValueError(f"unknown colour space {colour!r}: expected ycbcr or rgb")


def difference_map(
    a: torch.Tensor, b: torch.Tensor, colour: str = "ycbcr", weights: tuple[float, ...] = (1.0, 1.0, 1.0)
) -> torch.Tensor:
    """Per-pixel weighted sum of absolute channel differences of ``a`` and ``b`` (float [N, C, H, W]
    in [0, 1]) in ``colour`` space -> [N, H, W]. Grey images use the first weight."""
    if a.shape != b.shape:
        raise ValueError(f"images to compare differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    d = (colour_transform(a, colour) - colour_transform(b, colour)).abs()
    w = torch.tensor(weights[: d.shape[1]], device=d.device, dtype=d.dtype)
    return torch.einsum("c,nchw->nhw", w, d)


def erode(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level erosion of [N, H, W] maps: the minimum over a (2r+1)^2 square (borders see only
    the pixels inside the image)."""
    if radius <= 0:
        return maps
    k = 2 * radius + 1
    return -F.max_pool2d(-maps[:, None], kernel_size=k, stride=1, padding=radius)[:, 0]


def box_blur(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 square of [N, H, W] maps (borders: the pixels inside the image)."""
    if radius <= 0:
        return maps
    k = 2 * radius + 1
    x = maps[:, None]
    ones = torch.ones_like(x)
    s = F.avg_pool2d(x, k, stride=1, padding=radius, count_include_pad=True)
    n = F.avg_pool2d(ones, k, stride=1, padding=radius, count_include_pad=True)
    return (s / n)[:, 0]


def default_erosion_radius(resolution: int) -> int:
    """4 at 1024, 2 at 512, 1 at 256, 0 below: the radius scales with the image."""
    return resolution // 256


def region_mask(h: int, w: int, region: tuple[float, float, float, float] | None, device: torch.device) -> torch.Tensor:
    """Bool [H, W]: the pixels whose centres lie in ``region`` (fractions [left, top, right, bottom])."""
    if region is None:
        return torch.ones(h, w, dtype=torch.bool, device=device)
    x0, y0, x1, y1 = region
    ys = (torch.arange(h, device=device) + 0.5) / h
    xs = (torch.arange(w, device=device) + 0.5) / w
    mask = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    if not mask.any():
        raise ValueError(f"region {list(region)} holds no pixel centre of a {w}x{h} image")
    return mask


def reduce_scores(
    heat: torch.Tensor, reduce: str, top_fraction: float, region: tuple[float, float, float, float] | None = None
) -> torch.Tensor:
    """One score per heat map [N, H, W] -> [N] (float64)."""
    n, h, w = heat.shape
    values = heat[:, region_mask(h, w, region, heat.device)].to(torch.float64)  # [N, P]
    if reduce == "mean":
        return values.mean(dim=1)
    if reduce == "top_mean":
        k = max(1, math.ceil(top_fraction * values.shape[1]))
        return values.topk(k, dim=1).values.mean(dim=1)
    raise ValueError(f"unknown reduction {reduce!r}: expected top_mean or mean")


def peaks(heat: torch.Tensor) -> torch.Tensor:
    """Where each heat map [N, H, W] is largest, as (row, column) fractions of the image [N, 2]
    (pixel centres; the first maximum in raster order)."""
    n, h, w = heat.shape
    flat = heat.reshape(n, -1).argmax(dim=1)
    rows, cols = flat // w, flat % w
    return torch.stack([(rows + 0.5) / h, (cols + 0.5) / w], dim=1).to(torch.float64)


@dataclass
class HeatMaps:
    """Heat maps [N, H, W] (eroded differences), scores [N] and peaks [N, 2] of one batch."""

    heat: torch.Tensor
    scores: torch.Tensor
    peaks: torch.Tensor


def heat_maps(
    images: torch.Tensor,  # float [N, C, H, W] in [0, 1]: the faces
    normalised: torch.Tensor,  # the same size: their normalised versions
    colour: str,
    weights: tuple[float, ...],
    erosion_radius: int,
    reduce: str,
    top_fraction: float,
    region: tuple[float, float, float, float] | None = None,
) -> HeatMaps:
    heat = erode(difference_map(images, normalised, colour, weights), erosion_radius)
    inside = region_mask(heat.shape[1], heat.shape[2], region, heat.device)
    scored = heat.masked_fill(~inside, float("-inf")) if region is not None else heat
    return HeatMaps(heat=heat, scores=reduce_scores(heat, reduce, top_fraction, region), peaks=peaks(scored))

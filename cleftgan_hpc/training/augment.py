"""Adaptive discriminator augmentation: the StyleGAN2-ADA ``bgc`` pipeline (Karras et al. 2020).

Our own implementation from the paper's description and its published constants (op names,
per-op probabilities and strengths, formulas); no code from the reference.

What one call does, per sample:

1. Draw the parameters of every enabled op; each op fires with probability ``p * weight``
   (the two free rotations with ``1 - sqrt(1 - p * weight)`` each, so that at least one of
   them fires with ``p * weight``). An op that does not fire contributes an exact identity.
2. Compose the geometric ops (xflip, rotate90, xint, scale, rotate, aniso, rotate, xfrac)
   into one inverse 3x3 matrix ``G_inv`` mapping output pixel coordinates to input ones, and
   the colour ops (brightness, contrast, lumaflip, hue, saturation) into one 4x4 matrix ``C``
   acting on homogeneous RGB values.
3. Geometric warp, only for the samples whose ``G_inv`` is not the identity: upsample 2x with a
   Kaiser-windowed sinc half-band filter (edges extended by symmetric reflection), bilinear
   ``grid_sample`` with reflection at the borders, low-pass and decimate 2x with the same filter.
   Sampling at twice the rate keeps bilinear interpolation from aliasing; reflection avoids
   black borders, which D could use to tell augmented images apart.
4. Colour: ``rgb' = C[:3, :3] @ rgb + C[:3, 3]`` per pixel (for 1-channel images the rows are
   averaged, as the reference does).

Coordinates: pixel-centre coordinates in input-pixel units with the origin at the image
centre, x to the right, y down. Images are expected in the generator's range (about [-1, 1]);
brightness offsets and the contrast/lumaflip/saturation centre (0) refer to that range.

Everything is differentiable with respect to the images (and twice differentiable, for R1).
All randomness comes from a ``torch.Generator`` passed in; at ``p == 0`` the input is
returned as is (the same tensor) and no random numbers are drawn.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cleftgan_hpc.errors import CleftGanError

GEOMETRIC_OPS: tuple[str, ...] = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS: tuple[str, ...] = ("brightness", "contrast", "lumaflip", "hue", "saturation")
ALL_OPS: tuple[str, ...] = GEOMETRIC_OPS + COLOR_OPS

# The reference's groups: b(lit) = integer geometry, g(eneral geometry), c(olour).
PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "b": ("xflip", "rotate90", "xint"),
    "g": ("scale", "rotate", "aniso", "xfrac"),
    "c": COLOR_OPS,
    "bg": GEOMETRIC_OPS,
    "bgc": ALL_OPS,
}

_LUMA = (1.0 / math.sqrt(3.0),) * 3  # the luma axis in RGB, as the reference defines it


@dataclass(frozen=True)
class AugmentConfig:
    """Which ops run (with a probability multiplier each) and how strong they are.

    ``ops`` holds ``(name, weight)`` pairs; an op fires per sample with probability
    ``p * weight``. Ops always run in the canonical order of ``ALL_OPS`` whatever the order
    given, because composing the matrices in a fixed order is what the strengths assume.
    """

    ops: tuple[tuple[str, float], ...] = field(default_factory=lambda: tuple((op, 1.0) for op in ALL_OPS))
    xint_max: float = 0.125  # integer translation, uniform in +-xint_max of the image size
    scale_std: float = 0.2  # isotropic scale: log2 normal
    rotate_max: float = 1.0  # rotation: uniform in +-rotate_max half-turns (1 = full circle)
    aniso_std: float = 0.2  # anisotropic scale: log2 normal
    xfrac_std: float = 0.125  # fractional translation: normal, in units of the image size
    brightness_std: float = 0.2  # additive, in the [-1, 1] image range
    contrast_std: float = 0.5  # log2 normal
    hue_max: float = 1.0  # rotation about the luma axis: uniform in +-hue_max half-turns
    saturation_std: float = 1.0  # log2 normal
    filter_taps: int = 16  # Kaiser-windowed sinc for the 2x up/down steps (even length)
    filter_beta: float = 4.0  # Kaiser beta: about -46 dB stop band with 16 taps, 0.05 % pass ripple

    def __post_init__(self) -> None:
        seen: dict[str, float] = {}
        for item in self.ops:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise CleftGanError(f"augment op {item!r}: expected a (name, weight) pair")
            name, weight = item
            if name not in ALL_OPS:
                raise CleftGanError(f"unknown augment op {name!r}; known ops: {', '.join(ALL_OPS)}")
            if name in seen:
                raise CleftGanError(f"augment op {name!r} is listed twice")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise CleftGanError(f"augment op {name!r}: weight must be a finite number >= 0, got {weight!r}")
            seen[name] = float(weight)
        # canonical order, zero weights dropped: two configs that act the same compare equal
        object.__setattr__(self, "ops", tuple((op, seen[op]) for op in ALL_OPS if seen.get(op, 0.0) > 0))
        for name in ("xint_max", "scale_std", "rotate_max", "aniso_std", "xfrac_std", "brightness_std",
                     "contrast_std", "hue_max", "saturation_std", "filter_beta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise CleftGanError(f"augment {name} must be a finite number >= 0, got {value!r}")
        if self.filter_taps < 4 or self.filter_taps % 2:
            raise CleftGanError(f"augment filter_taps must be an even number >= 4, got {self.filter_taps}")

    @classmethod
    def preset(cls, name: str, **strengths: Any) -> AugmentConfig:
        """A named pipeline: ``bgc`` (default), ``bg``, ``b``, ``g``, ``c`` or ``none``."""
        if name not in PRESETS:
            raise CleftGanError(f"unknown augment pipeline {name!r}; choose one of {', '.join(PRESETS)} "
                                "or give a list of ops")
        return cls(ops=tuple((op, 1.0) for op in PRESETS[name]), **strengths)

    @classmethod
    def from_spec(cls, spec: str | Sequence[Any] | Mapping[str, float] | None, **strengths: Any) -> AugmentConfig:
        """Build from a job spec's ``augment`` value.

        Accepts a preset name, a mapping ``{op: weight}``, or a list whose items are op names
        (weight 1), ``[op, weight]`` pairs, ``{op: weight}`` or ``{"op": .., "weight": ..}``
        mappings, or objects with ``op`` and ``weight`` attributes (the spec's AugmentOp).
        """
        if spec is None:
            return cls.preset("none", **strengths)
        if isinstance(spec, str):
            return cls.preset(spec, **strengths)
        items: Iterable[Any] = spec.items() if isinstance(spec, Mapping) else spec
        ops: list[tuple[str, float]] = []
        for item in items:
            if isinstance(item, str):
                ops.append((item, 1.0))
            elif hasattr(item, "op") and hasattr(item, "weight"):
                ops.append((item.op, item.weight))
            elif isinstance(item, Mapping) and set(item) in ({"op"}, {"op", "weight"}):
                ops.append((item["op"], item.get("weight", 1.0)))
            elif isinstance(item, Mapping) and len(item) == 1:
                ops.append(next(iter(item.items())))
            elif isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str):
                ops.append((item[0], item[1]))
            else:
                raise CleftGanError(f"augment op {item!r}: expected a name, [name, weight] or {{name: weight}}")
        return cls(ops=tuple(ops), **strengths)

    def weight(self, op: str) -> float:
        """The probability multiplier of ``op`` (0 when it is not enabled)."""
        return dict(self.ops).get(op, 0.0)

    @property
    def has_geometric(self) -> bool:
        return any(self.weight(op) > 0 for op in GEOMETRIC_OPS)

    @property
    def has_color(self) -> bool:
        return any(self.weight(op) > 0 for op in COLOR_OPS)

    def with_strengths(self, **strengths: Any) -> AugmentConfig:
        return replace(self, **strengths)


def lowpass_filter(taps: int, beta: float) -> np.ndarray:
    """Half-band Kaiser-windowed sinc (cutoff at the original Nyquist), DC gain 1, float64 [taps].

    Even length and symmetric: at the 2x rate its centre falls between samples, which is
    exactly where the pixel-centre convention puts the original samples, so there is no
    shift. Its even and odd taps each sum to 1/2, so upsampling keeps constants constant.
    """
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(0.5 * n) * np.kaiser(taps, beta)
    return h / h.sum()


# ---------------------------------------------------------------------------------------------
# Parameter sampling: matrices only, no images (cheap; tests sample thousands)
# ---------------------------------------------------------------------------------------------


def _eye(n: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64, device=device).expand(batch, n, n).clone()


def _mat3(rows: list[list[Any]], batch: int, device: torch.device) -> torch.Tensor:
    """Stack per-sample entries (tensors [N] or numbers) into [N, 3, 3]."""
    out = torch.empty(batch, 3, 3, dtype=torch.float64, device=device)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            out[:, i, j] = v
    return out


def _rotate_inv(theta: torch.Tensor) -> torch.Tensor:
    """Inverse of a rotation by ``theta`` (radians): a rotation by -theta. [N] -> [N, 3, 3]."""
    c, s = torch.cos(theta), torch.sin(theta)
    return _mat3([[c, s, 0], [-s, c, 0], [0, 0, 1]], theta.shape[0], theta.device)


def _scale_inv(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return _mat3([[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]], sx.shape[0], sx.device)


def _translate_inv(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    return _mat3([[1, 0, -tx], [0, 1, -ty], [0, 0, 1]], tx.shape[0], tx.device)


@dataclass
class AugmentParams:
    """One batch's sampled transforms (all float64, on the generator's device)."""

    g_inv: torch.Tensor  # [N, 3, 3] output -> input pixel coordinates (centred, input-pixel units)
    color: torch.Tensor  # [N, 4, 4] homogeneous RGB transform

    @property
    def geometric_active(self) -> torch.Tensor:
        """[N] bool: samples whose geometric transform is not exactly the identity."""
        eye = torch.eye(3, dtype=self.g_inv.dtype, device=self.g_inv.device)
        return (self.g_inv != eye).flatten(1).any(dim=1)

    @property
    def color_active(self) -> torch.Tensor:
        """[N] bool: samples whose colour transform is not exactly the identity."""
        eye = torch.eye(4, dtype=self.color.dtype, device=self.color.device)
        return (self.color != eye).flatten(1).any(dim=1)


def sample_params(
    config: AugmentConfig, p: float, batch_size: int, height: int, width: int, generator: torch.Generator
) -> AugmentParams:
    """Draw one batch of transforms.

    The number of random draws depends only on ``config`` and ``batch_size``, never on ``p``,
    so the generator's stream stays aligned whatever p does (a resumed run draws the same).
    """
    n, dev = batch_size, generator.device
    f64 = torch.float64

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand((n, *shape), generator=generator, dtype=f64, device=dev)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn((n, *shape), generator=generator, dtype=f64, device=dev)

    def fires(op: str, prob: float | None = None) -> torch.Tensor:
        """[N] bool gate; drawn before the op's values."""
        return rand() < (p * config.weight(op) if prob is None else prob)

    w = config.weight
    g_inv = _eye(3, n, dev)
    if w("xflip"):
        on = fires("xflip")
        flip = torch.floor(rand() * 2)  # 0 or 1
        sx = torch.where(on, 1 - 2 * flip, torch.ones_like(flip))
        g_inv = g_inv @ _scale_inv(sx, torch.ones_like(sx))
    if w("rotate90"):
        on = fires("rotate90")
        k = torch.floor(rand() * 4)  # quarter turns
        k = torch.where(on, k, torch.zeros_like(k))
        # exact entries for quarter turns (cos/sin of multiples of pi/2 are not exact in float)
        c = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=f64, device=dev)[k.long()]
        s = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=f64, device=dev)[k.long()]
        g_inv = g_inv @ _mat3([[c, s, 0], [-s, c, 0], [0, 0, 1]], n, dev)
    if w("xint"):
        on = fires("xint")
        t = (rand(2) * 2 - 1) * config.xint_max
        t = torch.where(on[:, None], t, torch.zeros_like(t))
        g_inv = g_inv @ _translate_inv(torch.round(t[:, 0] * width), torch.round(t[:, 1] * height))
    if w("scale"):
        on = fires("scale")
        s = torch.exp2(randn() * config.scale_std)
        s = torch.where(on, s, torch.ones_like(s))
        g_inv = g_inv @ _scale_inv(s, s)
    # two independent rotations around aniso: the stretch gets an arbitrary axis
    p_rot = 1 - math.sqrt(min(max(1 - p * w("rotate"), 0.0), 1.0))
    if w("rotate"):
        on = fires("rotate", p_rot)
        theta = (rand() * 2 - 1) * math.pi * config.rotate_max
        g_inv = g_inv @ _rotate_inv(torch.where(on, theta, torch.zeros_like(theta)))
    if w("aniso"):
        on = fires("aniso")
        s = torch.exp2(randn() * config.aniso_std)
        s = torch.where(on, s, torch.ones_like(s))
        g_inv = g_inv @ _scale_inv(s, 1 / s)
    if w("rotate"):
        on = fires("rotate", p_rot)
        theta = (rand() * 2 - 1) * math.pi * config.rotate_max
        g_inv = g_inv @ _rotate_inv(torch.where(on, theta, torch.zeros_like(theta)))
    if w("xfrac"):
        on = fires("xfrac")
        t = randn(2) * config.xfrac_std
        t = torch.where(on[:, None], t, torch.zeros_like(t))
        g_inv = g_inv @ _translate_inv(t[:, 0] * width, t[:, 1] * height)

    color = _eye(4, n, dev)
    v = torch.tensor([*_LUMA, 0.0], dtype=f64, device=dev)
    vv = torch.outer(v, v)  # projector onto the luma axis (zero in the homogeneous slot)
    i4 = torch.eye(4, dtype=f64, device=dev)
    if w("brightness"):
        on = fires("brightness")
        b = randn() * config.brightness_std
        b = torch.where(on, b, torch.zeros_like(b))
        m = _eye(4, n, dev)
        m[:, :3, 3] = b[:, None]
        color = m @ color
    if w("contrast"):
        on = fires("contrast")
        c = torch.exp2(randn() * config.contrast_std)
        c = torch.where(on, c, torch.ones_like(c))
        m = _eye(4, n, dev)
        m[:, 0, 0] = m[:, 1, 1] = m[:, 2, 2] = c
        color = m @ color
    if w("lumaflip"):
        on = fires("lumaflip")
        i = torch.floor(rand() * 2)
        i = torch.where(on, i, torch.zeros_like(i))
        color = (i4 - 2 * vv * i[:, None, None]) @ color  # Householder reflection of luma
    if w("hue"):
        on = fires("hue")
        theta = (rand() * 2 - 1) * math.pi * config.hue_max
        theta = torch.where(on, theta, torch.zeros_like(theta))
        # Rodrigues: rotation by theta about the luma axis; identity exactly when theta == 0
        cross = torch.zeros(4, 4, dtype=f64, device=dev)
        a = _LUMA[0]
        cross[0, 1], cross[0, 2], cross[1, 0], cross[1, 2], cross[2, 0], cross[2, 1] = -a, a, a, -a, -a, a
        ct, st = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        i3 = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=f64, device=dev))
        rot = ct * i3 + st * cross + (1 - ct) * vv  # [N, 4, 4]: cos I + sin [v]x + (1 - cos) v v'
        rot[:, 3, 3] = 1
        color = torch.where(on[:, None, None], rot, i4) @ color
    if w("saturation"):
        on = fires("saturation")
        s = torch.exp2(randn() * config.saturation_std)
        s = torch.where(on, s, torch.ones_like(s))
        chroma = i4 - vv
        chroma[3, 3] = 0  # keep the homogeneous coordinate
        m = vv + chroma * s[:, None, None]
        m[:, 3, 3] = 1
        color = torch.where(on[:, None, None], m, i4) @ color  # exact identity when off
    return AugmentParams(g_inv=g_inv, color=color)


# ---------------------------------------------------------------------------------------------
# Applying the transforms
# ---------------------------------------------------------------------------------------------


def _reflect_index(n: int, lo: int, hi: int, device: torch.device) -> torch.Tensor:
    """Indices extending [0, n) by ``lo``/``hi`` samples with symmetric (edge-repeating) reflection."""
    i = torch.arange(-lo, n + hi, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _upsample2x_conv(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W] with the half-band filter ``f`` [K], symmetric edges."""
    _, c, h, w = x.shape
    k = f.shape[0]
    r = k // 4 + 1  # input samples the filter reaches past an edge
    dev = x.device
    x = x.index_select(3, _reflect_index(w, r, r, dev)).index_select(2, _reflect_index(h, r, r, dev))
    pad = k // 2 - 1  # puts input pixel j at 2j + 0.5 in output pixels: the pixel-centre convention
    wx = (f * 2).view(1, 1, 1, k).expand(c, 1, 1, k)
    wy = (f * 2).view(1, 1, k, 1).expand(c, 1, k, 1)
    x = F.conv_transpose2d(x, wx, stride=(1, 2), padding=(0, pad), groups=c)
    x = F.conv_transpose2d(x, wy, stride=(2, 1), padding=(pad, 0), groups=c)
    return x[:, :, 2 * r:2 * r + 2 * h, 2 * r:2 * r + 2 * w]


def _downsample2x_conv(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """[N, C, 2H + K - 2, 2W + K - 2] -> [N, C, H, W]: low-pass with ``f`` [K], keep every 2nd."""
    c, k = x.shape[1], f.shape[0]
    x = F.conv2d(x, f.view(1, 1, 1, k).expand(c, 1, 1, k), stride=(1, 2), groups=c)
    return F.conv2d(x, f.view(1, 1, k, 1).expand(c, 1, k, 1), stride=(2, 1), groups=c)


# Up to these side lengths the separable filters run as dense matrices (one matmul per axis):
# on CPU that is 2-3x faster than depthwise convolution up to 256 px (measured on 2 cores);
# above, the band matrices waste too much work on zeros. GPUs run depthwise convolutions
# well, so they switch earlier.
MATRIX_MAX_SIDE_CPU = 256
MATRIX_MAX_SIDE_GPU = 128


@functools.lru_cache(maxsize=32)
def _axis_matrix(kind: str, n: int, taps: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The 1-D operator of ``kind`` ('up' or 'down') on length ``n`` as a matrix [n_out, n].

    Built by running the convolution path on the identity, so both paths agree exactly in
    float64 (edge reflection included).
    """
    f = torch.tensor(taps, dtype=torch.float64)
    impulses = torch.eye(n, dtype=torch.float64).view(n, 1, 1, n)  # n impulses along x, height 1
    if kind == "up":
        rows = _upsample2x_conv(impulses, f)[:, 0, 0, :]  # [n, 2n]
    else:  # the y filter needs K rows; on a constant column it has gain 1
        rows = _downsample2x_conv(impulses.expand(n, 1, len(taps), n), f)[:, 0, 0, :]  # [n, n_out]
    return rows.T.contiguous().to(device=device, dtype=dtype)  # [n_out, n]


def _resample(x: torch.Tensor, taps: tuple[float, ...], kind: str) -> torch.Tensor:
    """2x up- or downsampling of [N, C, H, W] with the separable filter ``taps`` [K]."""
    h, w = x.shape[-2:]
    side = MATRIX_MAX_SIDE_CPU if x.device.type == "cpu" else MATRIX_MAX_SIDE_GPU
    small = max(h, w) <= (side if kind == "up" else 2 * side + len(taps) - 2)
    if not small:
        f = torch.tensor(taps, dtype=x.dtype, device=x.device)
        return _upsample2x_conv(x, f) if kind == "up" else _downsample2x_conv(x, f)
    mh = _axis_matrix(kind, h, taps, x.device, x.dtype)  # [H_out, H]
    mw = _axis_matrix(kind, w, taps, x.device, x.dtype)  # [W_out, W]
    # one large matmul per axis (einsum folds N and C into it, no per-image broadcasting)
    return torch.einsum("oh,nchw->ncow", mh, torch.matmul(x, mw.T))


def warp(images: torch.Tensor, g_inv: torch.Tensor, taps: Sequence[float] | np.ndarray) -> torch.Tensor:
    """Resample ``images`` [N, C, H, W] through ``g_inv`` [N, 3, 3] at 2x with the filter ``taps`` [K]."""
    n, _, h, w = images.shape
    taps = tuple(float(t) for t in taps)
    k = len(taps)
    up = _resample(images, taps, "up")  # [N, C, 2H, 2W]
    # The canvas extends e = K/2 - 1 upsampled pixels past each edge, so that the stride-2
    # filter below yields exactly H x W outputs centred on the original pixel centres.
    # In normalised coordinates (align_corners=False) a canvas position u in [-1, 1] is the
    # centred input-pixel coordinate u * (W + e) / 2, and a centred input coordinate x is
    # 2 x / W in the upsampled image: fold both scalings into one affine map for affine_grid.
    e = k // 2 - 1
    to_px = torch.diag(torch.tensor([(w + e) / 2, (h + e) / 2, 1.0], dtype=torch.float64))
    to_norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0], dtype=torch.float64))
    theta = (to_norm @ g_inv.detach().cpu() @ to_px)[:, :2, :]  # [N, 2, 3]
    size = [n, images.shape[1], 2 * h + 2 * e, 2 * w + 2 * e]
    grid = F.affine_grid(theta.to(device=images.device, dtype=images.dtype), size, align_corners=False)
    canvas = F.grid_sample(up, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _resample(canvas, taps, "down")


def apply_color(images: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Apply per-sample homogeneous colour matrices ``color`` [N, 4, 4] to ``images`` [N, C, H, W]."""
    n, c, h, w = images.shape
    m = color.to(device=images.device, dtype=images.dtype)
    flat = images.reshape(n, c, h * w)
    if c == 3:
        out = torch.baddbmm(m[:, :3, 3:], m[:, :3, :3], flat)
    elif c == 1:  # grey: average the RGB rows, as the reference does
        rows = m[:, :3, :].mean(dim=1, keepdim=True)  # [N, 1, 4]
        out = flat * rows[:, :, :3].sum(dim=2, keepdim=True) + rows[:, :, 3:]
    else:
        raise CleftGanError(f"colour augmentation needs 1 or 3 channels, got {c}")
    return out.reshape(n, c, h, w)


class AugmentPipe(torch.nn.Module):
    """The ADA pipeline as a module: ``pipe(images, generator) -> images``.

    ``pipe.p`` (a float >= 0) is set by the training loop; it is saved in ``state_dict()``.
    The module has no parameters and no buffers, so it can live on any device as is.
    """

    def __init__(self, config: AugmentConfig | None = None, p: float = 0.0) -> None:
        super().__init__()
        self.config = config if config is not None else AugmentConfig()
        self._p = 0.0
        self.p = p
        self.taps = tuple(float(t) for t in lowpass_filter(self.config.filter_taps, self.config.filter_beta))

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise CleftGanError(f"augment probability p must be a finite number >= 0, got {value!r}")
        self._p = value

    def get_extra_state(self) -> dict[str, float]:
        return {"p": self._p}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.p = state["p"]

    def extra_repr(self) -> str:
        return f"p={self._p:.4f}, ops={[op for op, _ in self.config.ops]}"

    def sample_params(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> AugmentParams:
        """The transforms a call with this batch shape would draw at the current p."""
        return sample_params(self.config, self._p, batch_size, height, width, generator)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``images`` [N, C, H, W] (float); same shape, dtype and device out."""
        if self._p == 0 or not self.config.ops:
            return images  # exactly the input; no random numbers drawn
        if generator is None:
            raise CleftGanError("AugmentPipe needs an explicit torch.Generator (no global RNG is used)")
        if images.ndim != 4 or not images.is_floating_point():
            raise CleftGanError(f"augment expects float images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        n, _, h, w = images.shape
        if n == 0:
            return images
        params = self.sample_params(n, h, w, generator)
        # half precision cannot place a sample to a fraction of a pixel at 1024 px: work in fp32
        out = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
        if self.config.has_geometric:
            active = params.geometric_active
            if bool(active.all()):
                out = warp(out, params.g_inv, self.taps)
            elif bool(active.any()):
                # untouched samples skip the resampling filters entirely (exact, and cheaper)
                idx = active.nonzero().squeeze(1).to(out.device)
                warped = warp(out.index_select(0, idx), params.g_inv[active], self.taps)
                out = out.index_copy(0, idx, warped)
        if self.config.has_color and bool(params.color_active.any()):
            out = apply_color(out, params.color)
        return out.to(images.dtype)

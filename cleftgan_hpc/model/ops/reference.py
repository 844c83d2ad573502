"""Plain, obviously correct versions of the ops: the yardstick the fast ops are tested against.

Each function here follows its textbook definition step by step (zero insertion, full-rate
filtering, strided discard; a grouped convolution per sample). They are slow on purpose and
must stay simple. Everything is built from differentiable torch ops, so autograd (including
double backward) works without custom Functions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Padding = tuple[int, int, int, int]  # (x0, x1, y0, y1): pixels added (negative: removed) at each edge


def ref_bias_act(
    x: torch.Tensor,  # [N, C, ...] input
    b: torch.Tensor | None = None,  # [C] bias added along dim 1
    act: str = "linear",  # "linear" or "lrelu"
    alpha: float = 0.2,  # lrelu slope for negative inputs
    gain: float | None = None,  # output scale; None: sqrt(2) for lrelu, 1 for linear
    clamp: float | None = None,  # clamp the output to [-clamp, clamp]; None: no clamp
) -> torch.Tensor:
    """Bias, then activation, then gain, then clamp."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = torch.where(x >= 0, x, x * alpha)
        gain = math.sqrt(2) if gain is None else gain
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    gain = 1.0 if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def ref_upfirdn2d(
    x: torch.Tensor,  # [N, C, H, W]
    f: torch.Tensor | None,  # [K] separable or [Kh, Kw] 2-D FIR filter; None: identity
    up: int = 1,  # upsampling factor (zeros inserted between samples)
    down: int = 1,  # downsampling factor (samples discarded)
    padding: Padding = (0, 0, 0, 0),  # applied after upsampling, before filtering
    flip_filter: bool = False,  # False: true convolution (filter flipped); True: correlation
    gain: float = 1.0,  # overall gain of the filter
) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR filter at full rate, downsample by discarding."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f[None, None].repeat([c, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = F.conv2d(x, f, groups=c)
    else:
        x = F.conv2d(x, f.unsqueeze(2), groups=c)
        x = F.conv2d(x, f.unsqueeze(3), groups=c)
    return x[:, :, ::down, ::down]


def ref_filtered_lrelu(
    x: torch.Tensor,  # [N, C, H, W]
    fu: torch.Tensor | None,  # upsampling filter, [K] or [K, K]; None: identity
    fd: torch.Tensor | None,  # downsampling filter, [K] or [K, K]; None: identity
    b: torch.Tensor | None = None,  # [C] bias added before upsampling
    up: int = 1,  # upsampling factor
    down: int = 1,  # downsampling factor
    padding: Padding = (0, 0, 0, 0),  # padding in the upsampled domain
    gain: float = math.sqrt(2),  # gain after the activation
    slope: float = 0.2,  # leaky ReLU slope
    clamp: float | None = None,  # clamp after gain
) -> torch.Tensor:
    """bias -> upsample(fu) -> leaky ReLU * gain, clamp -> downsample(fd)."""
    x = ref_bias_act(x, b)
    x = ref_upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)
    x = ref_bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return ref_upfirdn2d(x, fd, down=down)


def ref_modulated_conv2d(
    x: torch.Tensor,  # [N, I, H, W] input
    weight: torch.Tensor,  # [O, I, k, k] shared weight
    styles: torch.Tensor,  # [N, I] per-sample input scales
    demodulate: bool = True,  # normalise each output filter to unit norm
    padding: int = 0,  # zero padding of the convolution
    input_gain: torch.Tensor | None = None,  # [] or [I] extra input scale (StyleGAN3: rsqrt(magnitude_ema))
) -> torch.Tensor:
    """Per-sample weights (weight * style, demodulated) applied as one grouped convolution."""
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    w = weight.unsqueeze(0) * styles.reshape(n, 1, i, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        d = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
        w = w * d.reshape(n, o, 1, 1, 1)
    if input_gain is not None:
        w = w * input_gain.expand(n, i).reshape(n, 1, i, 1, 1)
    x = x.reshape(1, n * i, *x.shape[2:])
    x = F.conv2d(x, w.reshape(n * o, i, kh, kw).to(x.dtype), padding=padding, groups=n)
    return x.reshape(n, o, *x.shape[2:])

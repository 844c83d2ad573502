"""Upsample, FIR filter, downsample: polyphase and separable, nothing computed to be thrown away.

Upsampling uses a transposed convolution with stride `up` (each input sample scatters the
filter: the polyphase form of zero insertion + filtering); downsampling uses a convolution with
stride `down` (only the kept outputs are computed). A 1-D filter is applied separably, one axis
at a time, as depthwise convolutions, which are fast on CPU in channels_last layout.
All steps are differentiable torch ops, so double backward works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Padding = tuple[int, int, int, int]  # (x0, x1, y0, y1)


def _depthwise(f: torch.Tensor, channels: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D filter [K] as a depthwise kernel along `dim` (2: H, 3: W): [C, 1, K, 1] or [C, 1, 1, K]."""
    k = f.numel()
    shape = [1, 1, k, 1] if dim == 2 else [1, 1, 1, k]
    return f.to(dtype).reshape(shape).expand(channels, 1, *shape[2:]).contiguous()


def _pad_axis(x: torch.Tensor, dim: int, lo: int, hi: int) -> torch.Tensor:
    """Zero-pad (positive) or crop (negative) one spatial axis."""
    if lo == 0 and hi == 0:
        return x
    pads = [lo, hi, 0, 0] if dim == 3 else [0, 0, lo, hi]
    return F.pad(x, pads)


def fir_axis(
    x: torch.Tensor,  # [N, C, H, W]
    f: torch.Tensor,  # [K] filter (already scaled by its gain)
    dim: int,  # 2: filter along H, 3: along W
    up: int = 1,  # upsampling factor
    down: int = 1,  # downsampling factor
    pad0: int = 0,  # padding before (in the upsampled domain)
    pad1: int = 0,  # padding after
    flip_filter: bool = False,  # True: correlation instead of convolution
) -> torch.Tensor:
    """One axis of upfirdn: y = down(filter(pad(up(x))))."""
    c, length, k = x.shape[1], x.shape[dim], f.numel()
    if up > 1:
        # Transposed conv: out[i*up + j] += x[i] * h[j]; out[n] equals the zero-inserted,
        # padded, filtered signal at n - (k - 1 - pad0).
        h = f if not flip_filter else f.flip(0)
        stride = (up, 1) if dim == 2 else (1, up)
        out_len = length * up + pad0 + pad1 - k + 1
        start = k - 1 - pad0  # crop this much at the start of the full transposed-conv output ...
        end = (length - 1) * up + k - start - out_len  # ... and this much at its end
        crop = max(0, min(start, end))  # the transposed conv crops symmetric amounts itself (no copy)
        padding = (crop, 0) if dim == 2 else (0, crop)
        y = F.conv_transpose2d(x, _depthwise(h, c, dim, x.dtype), stride=stride, padding=padding, groups=c)
        y = _pad_axis(y, dim, crop - start, crop - end)
        if down > 1:
            y = y[:, :, ::down] if dim == 2 else y[:, :, :, ::down]
        return y
    g = f.flip(0) if not flip_filter else f  # conv2d correlates: flip for a true convolution
    stride = (down, 1) if dim == 2 else (1, down)
    if pad0 == pad1 and pad0 >= 0:
        padding = (pad0, 0) if dim == 2 else (0, pad0)
        return F.conv2d(x, _depthwise(g, c, dim, x.dtype), stride=stride, padding=padding, groups=c)
    x = _pad_axis(x, dim, pad0, pad1)
    return F.conv2d(x, _depthwise(g, c, dim, x.dtype), stride=stride, groups=c)


def upfirdn2d(
    x: torch.Tensor,  # [N, C, H, W]
    f: torch.Tensor | None,  # [K] separable or [Kh, Kw] 2-D filter; None: identity
    up: int = 1,  # upsampling factor
    down: int = 1,  # downsampling factor
    padding: Padding = (0, 0, 0, 0),  # (x0, x1, y0, y1) in the upsampled domain
    flip_filter: bool = False,  # True: correlation instead of convolution
    gain: float = 1.0,  # overall filter gain
) -> torch.Tensor:
    """Same result as `reference.ref_upfirdn2d`, without zero insertion or discarded outputs."""
    px0, px1, py0, py1 = padding
    if f is None:
        f = torch.ones([1], dtype=torch.float32, device=x.device)
    if f.ndim == 1:
        f = f * (gain**0.5)
        x = fir_axis(x, f, 3, up, down, px0, px1, flip_filter)
        return fir_axis(x, f, 2, up, down, py0, py1, flip_filter)
    # Non-separable 2-D filter.
    c = x.shape[1]
    f = (f * gain).to(x.dtype)
    kh, kw = f.shape
    if up > 1:
        h = f if not flip_filter else f.flip([0, 1])
        y = F.conv_transpose2d(x, h[None, None].expand(c, 1, kh, kw).contiguous(), stride=up, groups=c)
        out_w = x.shape[3] * up + px0 + px1 - kw + 1
        out_h = x.shape[2] * up + py0 + py1 - kh + 1
        sx, sy = kw - 1 - px0, kh - 1 - py0
        y = F.pad(y, [-sx, sx + out_w - y.shape[3], -sy, sy + out_h - y.shape[2]])
        return y[:, :, ::down, ::down] if down > 1 else y
    g = f.flip([0, 1]) if not flip_filter else f
    w = g[None, None].expand(c, 1, kh, kw).contiguous()
    if px0 == px1 == py0 == py1 and px0 >= 0:
        return F.conv2d(x, w, stride=down, padding=px0, groups=c)
    x = F.pad(x, [px0, px1, py0, py1])
    return F.conv2d(x, w, stride=down, groups=c)

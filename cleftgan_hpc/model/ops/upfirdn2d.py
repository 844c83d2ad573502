"""Upsample, FIR filter, downsample: polyphase and separable, nothing computed to be thrown away.

Upsampling uses a transposed convolution with stride `up` (each input sample scatters the
filter: the polyphase form of zero insertion + filtering); downsampling uses a convolution with
stride `down` (only the kept outputs are computed). A 1-D filter is applied separably, one axis
at a time, as depthwise convolutions, which are fast on CPU in channels_last layout.
All steps are differentiable torch ops, so double backward works.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

Padding = tuple[int, int, int, int]  # (x0, x1, y0, y1)
_T = TypeVar("_T")


# Kernels made from a filter, remembered while the filter lives and is unchanged: a synthesis
# layer calls the op once per chunk of its batch with the same filter buffers, and making the
# depthwise kernels (scale, flip, cast, expand) is a handful of small ops each time.
_KERNELS: dict[int, tuple[weakref.ref, int, dict[tuple, object]]] = {}


def filter_cached(f: torch.Tensor, key: tuple, make: Callable[[], _T]) -> _T:
    """make(), computed once per constant filter ``f`` and ``key``; recomputed where f is
    trainable, traced or compiled (then nothing is kept)."""
    if (f.requires_grad or type(f) is not torch.Tensor or torch.is_inference_mode_enabled() or torch.jit.is_tracing()
            or torch.compiler.is_compiling()):
        return make()
    entry = _KERNELS.get(id(f))
    if entry is None or entry[0]() is not f or entry[1] != f._version:
        fid = id(f)

        def forget(ref: weakref.ref, fid: int = fid) -> None:
            if (old := _KERNELS.get(fid)) is not None and old[0] is ref:
                del _KERNELS[fid]

        entry = (weakref.ref(f, forget), f._version, {})
        _KERNELS[fid] = entry
    kernels = entry[2]
    key = (*key, f.dtype, f.device)
    if key not in kernels:
        with torch.no_grad():
            kernels[key] = make()
    return kernels[key]  # type: ignore[return-value]


def peak_gain(f: torch.Tensor | None, up: int, gain: float) -> float:
    """The largest |output| of ``upfirdn2d(x, f, up=up, gain=gain)`` (any padding, no
    downsampling) per unit of max |x|: each output sums x times the taps of one phase of the
    filter, so the largest phase's sum of |taps| bounds it (for a separable filter, per axis)."""
    if f is None:
        return gain

    def make() -> float:
        a = f.detach().double().abs()
        if a.ndim == 1:
            phase = max(float(a[p::up].sum()) for p in range(up))
            return phase**2 * gain
        return max(float(a[p::up, q::up].sum()) for p in range(up) for q in range(up)) * gain

    return filter_cached(f, ("peak", up, gain), make)


def _depthwise(
    f: torch.Tensor, channels: int, dim: int, dtype: torch.dtype, scale: float = 1.0, flip: bool = False
) -> torch.Tensor:
    """A 1-D filter [K] (times ``scale``, flipped) as a depthwise kernel along `dim` (2: H, 3: W):
    [C, 1, K, 1] or [C, 1, 1, K]."""

    def make() -> torch.Tensor:
        h = f * scale if scale != 1 else f
        h = h.flip(0) if flip else h
        k = h.numel()
        shape = [1, 1, k, 1] if dim == 2 else [1, 1, 1, k]
        return h.to(dtype).reshape(shape).expand(channels, 1, *shape[2:]).contiguous()

    return filter_cached(f, ("dw", scale, flip, channels, dim, dtype), make)


def _depthwise_2d(f: torch.Tensor, channels: int, dtype: torch.dtype, scale: float, flip: bool) -> torch.Tensor:
    """A 2-D filter [Kh, Kw] (times ``scale``, flipped) as a depthwise kernel [C, 1, Kh, Kw]."""

    def make() -> torch.Tensor:
        h = (f * scale).to(dtype)
        h = h.flip([0, 1]) if flip else h
        return h[None, None].expand(channels, 1, *h.shape).contiguous()

    return filter_cached(f, ("dw2", scale, flip, channels, dtype), make)


def _pad_axis(x: torch.Tensor, dim: int, lo: int, hi: int) -> torch.Tensor:
    """Zero-pad (positive) or crop (negative) one spatial axis."""
    if lo == 0 and hi == 0:
        return x
    pads = [lo, hi, 0, 0] if dim == 3 else [0, 0, lo, hi]
    return F.pad(x, pads)


# -- along H in channels_last: banded matrix products ------------------------------------------------
# In channels_last memory a row of the image is one contiguous run of W*C values, and filtering
# along H makes each output row a weighted sum of a few input rows: a matrix product with a banded
# [out_H, in_H] matrix. Cut into blocks of output rows (and the input rows they read), each block
# is one sgemm on contiguous memory, writing straight into the output: faster on the CPU than
# oneDNN's depthwise (transposed) convolution along H. Only where nothing records gradients (the
# matrix products write into slices of the output) and no dispatch mode (FLOP counting, fake
# tensors) watches: those see the depthwise convolutions, the work the network needs.
_banded: contextvars.ContextVar[bool] = contextvars.ContextVar("cleftgan_banded_fir", default=True)


@contextlib.contextmanager
def banded_fir(enabled: bool) -> Iterator[None]:
    """Within this block (this thread / context), allow (or forbid) the banded products along H."""
    token = _banded.set(enabled)
    try:
        yield
    finally:
        _banded.reset(token)


def unobserved_eager() -> bool:
    """Plain eager execution that nothing records: no dispatch mode (a FLOP counter sees only the
    ops it is shown), no tracing, no compiling. Only then may the ops take paths of their own."""
    return _get_current_dispatch_mode() is None and not torch.jit.is_tracing() and not torch.compiler.is_compiling()


def _banded_usable(x: torch.Tensor, f: torch.Tensor, dim: int) -> bool:
    return (
        dim == 2 and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.shape[1] > 1
        and x.shape[3] > 1 and _banded.get()
        and x.is_contiguous(memory_format=torch.channels_last)
        and not (torch.is_grad_enabled() and (x.requires_grad or f.requires_grad))
        and unobserved_eager()
    )


def _band_blocks(
    f: torch.Tensor, length: int, up: int, down: int, pad0: int, pad1: int, flip_filter: bool, scale: float
) -> list[tuple[int, int, int, int, torch.Tensor | None]]:
    """(out rows o0:o1, in rows i0:i1, their block of the banded matrix, None where all zero)."""

    def make() -> list[tuple[int, int, int, int, torch.Tensor | None]]:
        with banded_fir(False):  # the matrix: the depthwise path applied to the identity
            eye = torch.eye(length, dtype=torch.float32, device=f.device).reshape(length, 1, length, 1)
            m = fir_axis(eye, f, 2, up, down, pad0, pad1, flip_filter, scale)[:, 0, :, 0].t()  # [out, in]
        rows = 32 if up > 1 else 16  # measured on an Intel Xeon (AVX-512): fewer, larger blocks cost less Python
        blocks = []
        for o0 in range(0, m.shape[0], rows):
            o1 = min(m.shape[0], o0 + rows)
            used = (m[o0:o1] != 0).any(0).nonzero()
            if used.numel() == 0:
                blocks.append((o0, o1, 0, 0, None))
                continue
            i0, i1 = int(used.min()), int(used.max()) + 1
            blocks.append((o0, o1, i0, i1, m[o0:o1, i0:i1].contiguous()))
        return blocks

    return filter_cached(f, ("band", length, up, down, pad0, pad1, flip_filter, scale), make)


def _fir_h_banded(
    x: torch.Tensor, f: torch.Tensor, up: int, down: int, pad0: int, pad1: int, flip_filter: bool, scale: float
) -> torch.Tensor:
    """fir_axis along H of a channels_last float32 tensor, through banded matrix products."""
    n, c, h, w = x.shape
    blocks = _band_blocks(f, h, up, down, pad0, pad1, flip_filter, scale)
    out_h = blocks[-1][1]
    rows_in = x.permute(0, 2, 3, 1).reshape(n, h, w * c)  # views: channels_last is [N, H, W, C] in memory
    out = torch.empty((n, out_h, w, c), dtype=x.dtype, device=x.device)
    rows_out = out.view(n, out_h, w * c)
    for src, dst in zip(rows_in, rows_out, strict=True):
        for o0, o1, i0, i1, a in blocks:
            if a is None:
                dst[o0:o1].zero_()
            else:
                torch.mm(a, src[i0:i1], out=dst[o0:o1])
    return out.permute(0, 3, 1, 2)


def fir_axis(
    x: torch.Tensor,  # [N, C, H, W]
    f: torch.Tensor,  # [K] filter
    dim: int,  # 2: filter along H, 3: along W
    up: int = 1,  # upsampling factor
    down: int = 1,  # downsampling factor
    pad0: int = 0,  # padding before (in the upsampled domain)
    pad1: int = 0,  # padding after
    flip_filter: bool = False,  # True: correlation instead of convolution
    scale: float = 1.0,  # the filter's gain along this axis
) -> torch.Tensor:
    """One axis of upfirdn: y = down(filter(pad(up(x))))."""
    if _banded_usable(x, f, dim):
        return _fir_h_banded(x, f, up, down, pad0, pad1, flip_filter, scale)
    c, length, k = x.shape[1], x.shape[dim], f.numel()
    if up > 1:
        # Transposed conv: out[i*up + j] += x[i] * h[j]; out[n] equals the zero-inserted,
        # padded, filtered signal at n - (k - 1 - pad0).
        stride = (up, 1) if dim == 2 else (1, up)
        out_len = length * up + pad0 + pad1 - k + 1
        start = k - 1 - pad0  # crop this much at the start of the full transposed-conv output ...
        end = (length - 1) * up + k - start - out_len  # ... and this much at its end
        crop = max(0, min(start, end))  # the transposed conv crops symmetric amounts itself (no copy)
        padding = (crop, 0) if dim == 2 else (0, crop)
        w = _depthwise(f, c, dim, x.dtype, scale, flip_filter)
        y = F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=c)
        y = _pad_axis(y, dim, crop - start, crop - end)
        if down > 1:
            y = y[:, :, ::down] if dim == 2 else y[:, :, :, ::down]
        return y
    w = _depthwise(f, c, dim, x.dtype, scale, not flip_filter)  # conv2d correlates: flip for a true convolution
    stride = (down, 1) if dim == 2 else (1, down)
    if pad0 == pad1 and pad0 >= 0:
        padding = (pad0, 0) if dim == 2 else (0, pad0)
        return F.conv2d(x, w, stride=stride, padding=padding, groups=c)
    x = _pad_axis(x, dim, pad0, pad1)
    return F.conv2d(x, w, stride=stride, groups=c)


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
        scale = gain**0.5
        x = fir_axis(x, f, 3, up, down, px0, px1, flip_filter, scale)
        return fir_axis(x, f, 2, up, down, py0, py1, flip_filter, scale)
    # Non-separable 2-D filter.
    c = x.shape[1]
    kh, kw = f.shape
    if up > 1:
        y = F.conv_transpose2d(x, _depthwise_2d(f, c, x.dtype, gain, flip_filter), stride=up, groups=c)
        out_w = x.shape[3] * up + px0 + px1 - kw + 1
        out_h = x.shape[2] * up + py0 + py1 - kh + 1
        sx, sy = kw - 1 - px0, kh - 1 - py0
        y = F.pad(y, [-sx, sx + out_w - y.shape[3], -sy, sy + out_h - y.shape[2]])
        return y[:, :, ::down, ::down] if down > 1 else y
    w = _depthwise_2d(f, c, x.dtype, gain, not flip_filter)
    if px0 == px1 == py0 == py1 and px0 >= 0:
        return F.conv2d(x, w, stride=down, padding=px0, groups=c)
    x = F.pad(x, [px0, px1, py0, py1])
    return F.conv2d(x, w, stride=down, groups=c)


# -- the transpose (the gradient w.r.t. the input), op for op --------------------------------------
# upfirdn2d is linear in x; its gradient mirrors each step of the forward: a strided conv's is
# the matching conv-input gradient, a transposed conv's is the plain conv with the same kernel,
# a crop's is a pad, a subsampling's is zero insertion. The same kernels autograd would run,
# without keeping anything from the forward but shapes.


def _conv_transpose_input_grad(
    g: torch.Tensor,
    in_shape: list[int],
    w: torch.Tensor,
    stride: tuple[int, int] | int,
    padding: tuple[int, int] | int,
    groups: int,
) -> torch.Tensor:
    """The gradient of conv_transpose2d(x, w, stride, padding) w.r.t. x, through the same kernel
    autograd uses (a plain conv2d is its mathematical equal, but slower for depthwise filters)."""
    stride = (stride, stride) if isinstance(stride, int) else stride
    padding = (padding, padding) if isinstance(padding, int) else padding
    return torch.ops.aten.convolution_backward(
        g, _shape_of(g, in_shape), w, None, list(stride), list(padding), [1, 1], True, [0, 0], groups,
        [True, False, False],
    )[0]


def _shape_of(g: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """An input of ``shape`` for a convolution's input gradient (only its shape and layout are read,
    its memory never touched), in g's layout: the gradient comes out in the layout of this input,
    so a stand-in of another layout would make the kernel copy g into that layout and back."""
    if g.dim() == 4 and not g.is_contiguous() and g.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(shape, dtype=g.dtype, device=g.device, memory_format=torch.channels_last)
    return g.new_empty(1).expand(shape)


def _conv2d_input(
    shape: list[int], w: torch.Tensor, g: torch.Tensor, stride: tuple[int, int] | int = 1,
    padding: tuple[int, int] | int = 0, groups: int = 1,
) -> torch.Tensor:
    """torch.nn.grad.conv2d_input, with a stand-in input in g's layout (see _shape_of)."""
    stride = (stride, stride) if isinstance(stride, int) else stride
    padding = (padding, padding) if isinstance(padding, int) else padding
    return torch.ops.aten.convolution_backward(
        g, _shape_of(g, shape), w, None, list(stride), list(padding), [1, 1], False, [0, 0], groups,
        [True, False, False],
    )[0]


def _unslice(g: torch.Tensor, dims: tuple[int, ...], lengths: tuple[int, ...], step: int) -> torch.Tensor:
    """The transpose of x[..., ::step] along ``dims`` (full lengths given): zeros between."""
    shape = list(g.shape)
    for d, n in zip(dims, lengths, strict=True):
        shape[d] = n
    out = g.new_zeros(shape)
    index = [slice(None)] * g.ndim
    for d in dims:
        index[d] = slice(None, None, step)
    out[tuple(index)] = g
    return out


def fir_axis_transpose(
    g: torch.Tensor, length: int, f: torch.Tensor, dim: int, up: int = 1, down: int = 1, pad0: int = 0,
    pad1: int = 0, flip_filter: bool = False, scale: float = 1.0,
) -> torch.Tensor:
    """The gradient of ``fir_axis`` w.r.t. its input (of ``length`` along ``dim``) for output gradient g."""
    c, k = g.shape[1], f.numel()
    if up > 1:
        stride = (up, 1) if dim == 2 else (1, up)
        out_len = length * up + pad0 + pad1 - k + 1
        start = k - 1 - pad0
        end = (length - 1) * up + k - start - out_len
        crop = max(0, min(start, end))
        if down > 1:
            g = _unslice(g, (dim,), (out_len,), down)
        g = _pad_axis(g, dim, start - crop, end - crop)
        padding = (crop, 0) if dim == 2 else (0, crop)
        shape = list(g.shape)
        shape[dim] = length
        w = _depthwise(f, c, dim, g.dtype, scale, flip_filter)
        return _conv_transpose_input_grad(g, shape, w, stride, padding, c)
    w = _depthwise(f, c, dim, g.dtype, scale, not flip_filter)
    stride = (down, 1) if dim == 2 else (1, down)
    shape = list(g.shape)
    if pad0 == pad1 and pad0 >= 0:
        shape[dim] = length
        padding = (pad0, 0) if dim == 2 else (0, pad0)
        return _conv2d_input(shape, w, g, stride=stride, padding=padding, groups=c)
    shape[dim] = length + pad0 + pad1
    g = _conv2d_input(shape, w, g, stride=stride, groups=c)
    return _pad_axis(g, dim, -pad0, -pad1)


def upfirdn2d_transpose(
    g: torch.Tensor,  # [N, C, outH, outW] gradient of upfirdn2d's output
    in_size: tuple[int, int],  # (inH, inW) of its input
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: Padding = (0, 0, 0, 0),
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """The gradient of ``upfirdn2d`` w.r.t. its input, mirroring its steps (see above)."""
    px0, px1, py0, py1 = padding
    in_h, in_w = in_size
    if f is None:
        f = torch.ones([1], dtype=torch.float32, device=g.device)
    if f.ndim == 1:
        scale = gain**0.5
        g = fir_axis_transpose(g, in_h, f, 2, up, down, py0, py1, flip_filter, scale)  # the forward's last step first
        return fir_axis_transpose(g, in_w, f, 3, up, down, px0, px1, flip_filter, scale)
    c = g.shape[1]
    kh, kw = f.shape
    if up > 1:
        out_w, out_h = in_w * up + px0 + px1 - kw + 1, in_h * up + py0 + py1 - kh + 1
        if down > 1:
            g = _unslice(g, (2, 3), (out_h, out_w), down)
        full_h, full_w = (in_h - 1) * up + kh, (in_w - 1) * up + kw  # the transposed conv's output
        sx, sy = kw - 1 - px0, kh - 1 - py0
        g = F.pad(g, [sx, full_w - sx - out_w, sy, full_h - sy - out_h])
        w = _depthwise_2d(f, c, g.dtype, gain, flip_filter)
        return _conv_transpose_input_grad(g, [g.shape[0], c, in_h, in_w], w, up, 0, c)
    w = _depthwise_2d(f, c, g.dtype, gain, not flip_filter)
    if px0 == px1 == py0 == py1 and px0 >= 0:
        return _conv2d_input([g.shape[0], c, in_h, in_w], w, g, stride=down, padding=px0, groups=c)
    shape = [g.shape[0], c, in_h + py0 + py1, in_w + px0 + px1]
    g = _conv2d_input(shape, w, g, stride=down, groups=c)
    return F.pad(g, [-px0, -px1, -py0, -py1])

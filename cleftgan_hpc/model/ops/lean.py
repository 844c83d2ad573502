"""Memory-lean autograd for the synthesis layers: keep what backward needs, recompute the rest.

A StyleGAN3 synthesis layer is modulated conv -> bias -> upsample -> leaky ReLU (gain, clamp)
-> downsample. Left to autograd, a grad-enabled forward keeps the layer input twice (before and
after modulation), the conv output, and the 4x (or 16x) upsampled intermediate with the
activation's result: at 1024x1024 about 13.5 GB per image, mostly upsampled values.

- ``LeanFilteredLReLU`` keeps one bit per upsampled value (its sign), two where a clamp is
  set (sign, clamped), packed into bytes: the activation's derivative is all backward needs,
  since upsampling and downsampling are linear. Backward runs their transposes
  (upfirdn2d_transpose: the kernels autograd would run) around the mask: down^T -> mask -> up^T.
- ``ModulatedConv`` keeps the unmodulated input and the styles, and modulates again in
  backward (one multiply) instead of keeping the modulated copy.

Both are differentiable in their backward (double backward works; the activation's mask
is piecewise constant, so its own derivative is zero almost everywhere, as autograd's).
Forward results are bit-identical to the composite ops: the same torch calls, in order.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from .bias_act import clamp_is_idle
from .upfirdn2d import Padding, banded_fir, upfirdn2d, upfirdn2d_transpose

LITTLE_ENDIAN = sys.byteorder == "little"
_enabled: contextvars.ContextVar[bool | None] = contextvars.ContextVar("cleftgan_lean_autograd", default=None)

LEAN_MIN_BYTES_CPU = 32 * 2**20
"""On the CPU the lean path costs a little time on small ops (packing the codes is a pass of its
own: a single 64x54x54 op took 1.08x the composite's forward + backward, an 84x84x256 one
0.95-1.0x, on an Intel Xeon here), so by default it is taken only where the memory it saves is
large: an op whose biggest intermediate reaches this size (the 256+ resolutions). On a GPU,
where memory caps the batch, it is always taken."""


@contextlib.contextmanager
def lean_autograd(enabled: bool | None = True) -> Iterator[None]:
    """Within this block (this thread / context), grad-enabled synthesis layers use the lean
    functions (True), plain autograd over the composite ops (False), or the default choice
    (None: always on a GPU, on the CPU for large intermediates only)."""
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


def lean_mode() -> bool | None:
    """The current setting: True (always), False (never) or None (the default choice)."""
    return _enabled.get()


def use_lean(*tensors: torch.Tensor | None, nbytes: int = 0) -> bool:
    """Whether an op on these tensors, whose largest intermediate is ``nbytes``, takes the lean
    path: autograd will need it, and it is on (or, by default, worth it here)."""
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        return False
    if not LITTLE_ENDIAN:  # the codes are packed by reading bytes as little-endian words
        return False
    choice = _enabled.get()
    if choice is not None:
        return choice
    device = next(t.device for t in tensors if t is not None)
    return device.type != "cpu" or nbytes >= LEAN_MIN_BYTES_CPU


# -- sign/clamp codes, packed --------------------------------------------------------------------

# Eight 0/1 bytes read as one little-endian int64 gather into its top byte when multiplied by
# this (byte i lands on bit 56 + i, and no two products meet there); the other way, a byte
# repeated eight times and masked keeps bit i in byte i. One pass each way, not eight.
_GATHER = 0x0102040810204080
_SPREAD_MASK = 0x8040201008040201 - (1 << 64)  # as a signed int64


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 values a byte (bit i of byte k is value 8k + i)."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad or flat.storage_offset() % 8:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return ((flat.view(torch.uint8).view(torch.int64) * _GATHER) >> 56).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool tensor of ``shape`` that ``pack_bits`` packed."""
    n = math.prod(shape)
    spread = (packed.to(torch.int64) * 0x0101010101010101).bitwise_and_(_SPREAD_MASK)
    return (spread.view(torch.uint8) != 0)[:n].reshape(shape)


# The CPU's way to the same bytes: bool tensors are slow to write there (several times a float
# pass), so a comparison writes float 0/1 and a matrix-vector product with the bit weights packs
# each 8 into a byte; unpacking looks each byte's 8 factors up in a 256-row table (no bool, no
# int64 pass). And both run in the tensor's memory order, so a channels_last tensor is never
# transposed (its codes are then in NHWC order: ``ctx.codes_nhwc``).
_BIT_WEIGHTS = [float(1 << i) for i in range(8)]
_NUMPY_COMPARE: dict[Callable[..., torch.Tensor], Callable[..., np.ndarray]] = {
    torch.le: np.less_equal, torch.gt: np.greater,
}
_TABLES: dict[tuple, torch.Tensor] = {}


CODE_CHUNK = 1 << 18
"""Values per chunk when the CPU packs codes or applies them in place: a chunk's intermediates
(its 0/1 bytes, its float factors) are written and read back while still in cache, not as
tensors as large as the activations going to memory and back. On an Intel Xeon here, for 32M
values: applying 17 ms instead of 63 ms (autograd's leaky ReLU backward: 44 ms), packing 12 ms
instead of 16 ms. A multiple of 8 (whole code bytes)."""


def memory_order(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """t flattened in its memory order (a view), and whether that is channels_last's (NHWC)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1), True
    return t.reshape(-1), False


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pack_pool() -> ThreadPoolExecutor:
    """Threads for packing codes, as many as torch's intra-op threads (made again after a fork or a
    change of that number: a pool's threads do not survive into a forked child)."""
    global _POOL
    key = (os.getpid(), torch.get_num_threads())
    if _POOL is None or _POOL[:2] != key:
        if _POOL is not None and _POOL[0] == key[0]:
            _POOL[2].shutdown(wait=False)
        _POOL = (*key, ThreadPoolExecutor(key[1], thread_name_prefix="lean-codes"))
    return _POOL[2]


def pack_compare(flat: torch.Tensor, compare: Callable[..., torch.Tensor], value: float) -> torch.Tensor:
    """pack_bits(compare(flat, value)) for a flat float tensor, without a bool tensor (float32 and
    float64 through numpy's comparison and packbits: 3x faster than the float 0/1 and product)."""
    np_compare = _NUMPY_COMPARE.get(compare)
    if np_compare is not None and flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        values = flat.detach().numpy()
        packed = np.empty((values.size + 7) // 8, np.uint8)

        def pack_range(lo: int, hi: int) -> None:  # whole chunks, so each part writes whole code bytes
            bits = np.empty(min(hi - lo, CODE_CHUNK), np.bool_)
            for start in range(lo, hi, CODE_CHUNK):
                part = values[start : min(start + CODE_CHUNK, hi)]
                np_compare(part, value, out=bits[: part.size])
                packed[start // 8 : (start + part.size + 7) // 8] = np.packbits(bits[: part.size], bitorder="little")

        chunks = -(-values.size // CODE_CHUNK)
        parts = min(torch.get_num_threads(), chunks)
        if parts > 1:  # numpy's comparison and packbits run without the GIL: one part per torch thread
            bounds = [values.size * k // parts // CODE_CHUNK * CODE_CHUNK for k in range(parts)] + [values.size]
            list(_pack_pool().map(lambda k: pack_range(bounds[k], bounds[k + 1]), range(parts)))
        else:
            pack_range(0, values.size)
        return torch.from_numpy(packed)
    n = flat.numel()
    m = (n + 7) // 8
    buf = torch.empty(m * 8, dtype=torch.float32, device=flat.device)
    compare(flat, value, out=buf[:n])
    buf[n:].zero_()
    return buf.view(m, 8).mv(torch.tensor(_BIT_WEIGHTS, device=flat.device)).to(torch.uint8)


def code_factors(packed: torch.Tensor, n: int, if_set: float, if_clear: float, dtype: torch.dtype) -> torch.Tensor:
    """The flat [n] tensor whose value i is ``if_set`` where bit i of the codes is set, else ``if_clear``."""
    key = (if_set, if_clear, dtype, packed.device)
    table = _TABLES.get(key)
    if table is None:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        table = torch.where(bits == 1, if_set, if_clear).to(dtype=dtype, device=packed.device)
        _TABLES[key] = table
    return F.embedding(packed.long(), table).view(-1)[:n]


def _apply_codes(
    g: torch.Tensor, packed: torch.Tensor, if_set: float, if_clear: float, nhwc: bool, inplace: bool
) -> torch.Tensor:
    """g times the factor each code bit picks (codes in NHWC order where ``nhwc``)."""
    n, c, h, w = g.shape
    f = code_factors(packed, g.numel(), if_set, if_clear, g.dtype)
    f = f.view(n, h, w, c).permute(0, 3, 1, 2) if nhwc else f.view(g.shape)
    return g.mul_(f) if inplace else g * f


def _flat_in_code_order(g: torch.Tensor, nhwc: bool) -> torch.Tensor | None:
    """g as a flat view in the order its codes were packed, or None when its memory is in another order."""
    if nhwc:
        return g.permute(0, 2, 3, 1).view(-1) if g.is_contiguous(memory_format=torch.channels_last) else None
    return g.view(-1) if g.is_contiguous() else None


def apply_codes_all(
    g: torch.Tensor, factors: list[tuple[torch.Tensor, float, float]], nhwc: bool, inplace: bool
) -> torch.Tensor:
    """g times the factors of every (codes, if_set, if_clear) in ``factors``: on the CPU, in place and
    in cache-sized chunks where g's memory order is the codes'; else one whole tensor at a time."""
    flat = _flat_in_code_order(g, nhwc) if inplace and g.device.type == "cpu" and factors else None
    if flat is None:
        for packed, if_set, if_clear in factors:
            g = _apply_codes(g, packed, if_set, if_clear, nhwc, inplace)
        return g
    for start in range(0, flat.numel(), CODE_CHUNK):
        seg = flat[start : start + CODE_CHUNK]
        codes = slice(start // 8, (start + seg.numel() + 7) // 8)
        for packed, if_set, if_clear in factors:
            seg.mul_(code_factors(packed[codes], seg.numel(), if_set, if_clear, g.dtype))
    return g


# -- filtered leaky ReLU ---------------------------------------------------------------------------


def _upsampled(x: torch.Tensor, fu: torch.Tensor | None, up: int, padding: Padding) -> torch.Tensor:
    if fu is None and up == 1 and not any(padding):
        return x
    return upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)


class LeanFilteredLReLU(torch.autograd.Function):
    """bias -> upsample -> leaky ReLU (gain folded into the downsampling), clamp -> downsample,
    keeping a 1- or 2-bit code per upsampled value for backward (not the values)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        b: torch.Tensor | None,
        fu: torch.Tensor | None,
        fd: torch.Tensor | None,
        up: int,
        down: int,
        padding: Padding,
        gain: float,
        slope: float,
        clamp: float | None,
    ) -> torch.Tensor:
        with banded_fir(False):  # the composite ops' kernels exactly: results equal to the bit
            return LeanFilteredLReLU._forward(ctx, x, b, fu, fd, up, down, padding, gain, slope, clamp)

    @staticmethod
    def _forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, b: torch.Tensor | None, fu: torch.Tensor | None,
        fd: torch.Tensor | None, up: int, down: int, padding: Padding, gain: float, slope: float, clamp: float | None,
    ) -> torch.Tensor:
        y = x + b.to(x.dtype).reshape(1, -1, 1, 1) if b is not None else x
        u = _upsampled(y, fu, up, padding)
        owned = u is not x
        cpu = u.device.type == "cpu" and u.dim() == 4
        flat, nhwc = memory_order(u) if cpu else (u, False)
        # leaky ReLU's derivative is slope where u <= 0 (torch's convention at 0, kept exactly)
        codes = [] if slope == 1 else [pack_compare(flat, torch.le, 0.0) if cpu else pack_bits(u <= 0)]
        u = F.leaky_relu_(u, slope) if owned else F.leaky_relu(u, slope)
        clamped = False
        if clamp is not None and clamp >= 0:
            bound = clamp / gain
            # on the CPU one read tells whether the clamp changes anything (then no code is
            # needed); on a GPU that read would wait for the device, so the code is always kept
            idle = clamp_is_idle(y, fu, up, slope, bound)  # read from the smaller tensor first
            lo, hi = (u.amin(), u.amax()) if u.device.type == "cpu" and not idle else (None, None)
            if not idle and (lo is None or lo < -bound or hi > bound):
                # clamp's derivative: 1 up to the bounds, 0 beyond
                bits = pack_compare(memory_order(u)[0].abs(), torch.gt, bound) if cpu else pack_bits(u.abs() > bound)
                codes.append(bits)
                u = u.clamp_(-bound, bound)
                clamped = True
        out = upfirdn2d(u, fd, down=down, gain=gain) if fd is not None or down != 1 else u * gain
        ctx.save_for_backward(*codes, fu, fd)
        ctx.has_slope, ctx.has_clamp = slope != 1, clamped
        ctx.u_shape, ctx.in_size, ctx.has_bias = u.shape, (x.shape[2], x.shape[3]), b is not None
        ctx.up, ctx.down, ctx.padding, ctx.gain, ctx.slope = up, down, padding, gain, slope
        ctx.codes_nhwc = nhwc
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):  # noqa: ANN205
        *codes, fu, fd = ctx.saved_tensors
        if getattr(ctx, "codes_nhwc", False):  # e.g. a slice of a channel-chunked op's gradient: the
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)  # layout the codes are in
        if fd is not None or ctx.down != 1:
            g = upfirdn2d_transpose(grad_out, tuple(ctx.u_shape[2:]), fd, 1, ctx.down, gain=ctx.gain)
        else:
            g = grad_out * ctx.gain
        codes = list(codes)
        nhwc = getattr(ctx, "codes_nhwc", False)  # the compiled kernels' codes are in NCHW order
        # g is this function's own intermediate: scaled in place, unless a double backward records this
        inplace = not torch.is_grad_enabled()
        factors = []
        if ctx.has_slope:  # the derivative of leaky ReLU: slope where u <= 0, else 1
            factors.append((codes.pop(0), ctx.slope, 1.0))
        if ctx.has_clamp:  # the clamp's: 0 where it clamped
            factors.append((codes.pop(0), 0.0, 1.0))
        g = apply_codes_all(g, factors, nhwc, inplace)
        if fu is not None or ctx.up != 1 or any(ctx.padding):
            g = upfirdn2d_transpose(g, ctx.in_size, fu, ctx.up, 1, ctx.padding, gain=ctx.up**2)
        grad_b = g.sum([0, 2, 3]) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return g, grad_b, None, None, None, None, None, None, None, None


# -- modulated convolution (activations modulated, the weight shared) ------------------------------


class ModulatedConv(torch.autograd.Function):
    """conv2d(x * scale, weight): keeps x and scale, not the modulated copy of x."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,  # [N, I, H, W]
        scale: torch.Tensor,  # [N, I] (already in x's dtype)
        weight: torch.Tensor,  # [O, I, k, k] (already in x's dtype)
        padding: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, scale, weight)
        ctx.padding = padding
        return F.conv2d(x * scale.reshape(*scale.shape, 1, 1), weight, padding=padding)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):  # noqa: ANN205
        x, scale, weight = ctx.saved_tensors
        s = scale.reshape(*scale.shape, 1, 1)
        want_xs = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        # one call for both gradients, as autograd makes it (the weight's needs the modulated input again)
        xs = x * s if ctx.needs_input_grad[2] else x.new_empty(1).expand(x.shape)
        pad = [ctx.padding, ctx.padding]
        grad_xs, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, xs, weight, None, [1, 1], pad, [1, 1], False, [0, 0], 1, [want_xs, ctx.needs_input_grad[2], False]
        )
        grad_x = grad_xs * s if ctx.needs_input_grad[0] else None
        grad_scale = (grad_xs * x).sum([2, 3]) if ctx.needs_input_grad[1] else None
        return grad_x, grad_scale, grad_w, None

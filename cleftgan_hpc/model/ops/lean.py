"""Memory-lean autograd for the synthesis layers: keep what backward needs, recompute the rest.

A StyleGAN3 synthesis layer is modulated conv -> bias -> upsample -> leaky ReLU (gain, clamp)
-> downsample. Left to autograd, a grad-enabled forward keeps the layer input twice (before and
after modulation), the conv output, and the 4x (or 16x) upsampled intermediate with the
activation's result: at 1024x1024 about 13.5 GB per image, mostly upsampled values.

- ``LeanFilteredLReLU`` keeps one bit per upsampled value (its sign), two where a clamp is
  set (sign, clamped), packed into bytes: the activation's derivative is all backward needs,
  since upsampling and downsampling are linear. Backward runs the adjoint filters:
  down^T -> mask -> up^T, the same arithmetic autograd would do.
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
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .upfirdn2d import Padding, upfirdn2d

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("cleftgan_lean_autograd", default=True)


@contextlib.contextmanager
def lean_autograd(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread / context), grad-enabled synthesis layers use the lean
    functions (the default) or, with ``enabled=False``, plain autograd over the composite ops."""
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


def use_lean(*tensors: torch.Tensor | None) -> bool:
    """Whether an op on these tensors should take the lean path: autograd will need it, and it is on."""
    return _enabled.get() and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# -- sign/clamp codes, packed --------------------------------------------------------------------

_SHIFTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 values a byte (zero-padded to a multiple of 8)."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    groups = flat.view(-1, 8).to(torch.uint8)
    out = groups[:, 0].clone()
    for i in range(1, 8):
        out.bitwise_or_(groups[:, i] * _SHIFTS[i])  # distinct bits: OR never carries
    return out


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool tensor of ``shape`` that ``pack_bits`` packed."""
    n = math.prod(shape)
    bits = torch.stack([(packed & s) != 0 for s in _SHIFTS], dim=1).reshape(-1)
    return bits[:n].reshape(shape)


# -- the adjoint of upfirdn2d --------------------------------------------------------------------


def upfirdn2d_adjoint(
    grad: torch.Tensor,  # [N, C, outH, outW]: a gradient w.r.t. upfirdn2d's output
    f: torch.Tensor | None,
    in_size: tuple[int, int],  # (inH, inW) of the forward input
    up: int,
    down: int,
    padding: Padding,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """The gradient w.r.t. upfirdn2d's input: upfirdn2d is linear, and its transpose is another
    upfirdn2d with up and down swapped, the filter mirrored and the padding moved to where the
    forward's support ends."""
    px0, px1, py0, py1 = padding
    in_h, in_w = in_size
    out_h, out_w = grad.shape[2], grad.shape[3]
    if f is None:
        fh = fw = 1
    elif f.ndim == 1:
        fh = fw = f.numel()
    else:
        fh, fw = f.shape
    pad = (
        fw - px0 - 1,
        in_w * up - out_w * down + px0 - up + 1,
        fh - py0 - 1,
        in_h * up - out_h * down + py0 - up + 1,
    )
    return upfirdn2d(grad, f, up=down, down=up, padding=pad, flip_filter=not flip_filter, gain=gain)


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
        y = x + b.to(x.dtype).reshape(1, -1, 1, 1) if b is not None else x
        u = _upsampled(y, fu, up, padding)
        owned = u is not x
        # leaky ReLU's derivative is slope where u <= 0 (torch's convention at 0, kept exactly)
        codes = [pack_bits(u <= 0)] if slope != 1 else []
        u = F.leaky_relu_(u, slope) if owned else F.leaky_relu(u, slope)
        if clamp is not None and clamp >= 0:
            bound = clamp / gain
            outside = u.abs() > bound  # clamp's derivative is 1 on the bounds, 0 beyond them
            codes.append(pack_bits(outside))
            u = u.clamp_(-bound, bound)
        out = upfirdn2d(u, fd, down=down, gain=gain) if fd is not None or down != 1 else u * gain
        ctx.save_for_backward(*codes, fu, fd)
        ctx.has_slope, ctx.has_clamp = slope != 1, clamp is not None and clamp >= 0
        ctx.u_shape, ctx.in_size, ctx.has_bias = u.shape, (x.shape[2], x.shape[3]), b is not None
        ctx.up, ctx.down, ctx.padding, ctx.gain, ctx.slope = up, down, padding, gain, slope
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):  # noqa: ANN205
        *codes, fu, fd = ctx.saved_tensors
        if fd is not None or ctx.down != 1:
            g = upfirdn2d_adjoint(grad_out, fd, tuple(ctx.u_shape[2:]), 1, ctx.down, (0, 0, 0, 0), gain=ctx.gain)
        else:
            g = grad_out * ctx.gain
        codes = list(codes)
        if ctx.has_slope:
            negative = unpack_bits(codes.pop(0), ctx.u_shape)
            g = torch.where(negative, g * ctx.slope, g)
        if ctx.has_clamp:
            g = g.masked_fill(unpack_bits(codes.pop(0), ctx.u_shape), 0)
        if fu is not None or ctx.up != 1 or any(ctx.padding):
            g = upfirdn2d_adjoint(g, fu, ctx.in_size, ctx.up, 1, ctx.padding, gain=ctx.up**2)
        grad_b = g.sum([0, 2, 3]) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return g, grad_b, None, None, None, None, None, None, None, None


def lean_filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None,
    fd: torch.Tensor | None,
    b: torch.Tensor | None,
    up: int,
    down: int,
    padding: Padding,
    gain: float,
    slope: float,
    clamp: float | None,
) -> torch.Tensor:
    """The op through ``LeanFilteredLReLU`` (filters are constants: they get no gradient)."""
    if (fu is not None and fu.requires_grad) or (fd is not None and fd.requires_grad):
        raise ValueError("the lean filtered_lrelu treats its filters as constants; they must not require grad")
    return LeanFilteredLReLU.apply(x, b, fu, fd, up, down, padding, gain, slope, clamp)


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
        grad_x = grad_scale = grad_w = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_xs = torch.nn.grad.conv2d_input(x.shape, weight, grad, padding=ctx.padding)
            if ctx.needs_input_grad[0]:
                grad_x = grad_xs * s
            if ctx.needs_input_grad[1]:
                grad_scale = (grad_xs * x).sum([2, 3])
        if ctx.needs_input_grad[2]:
            grad_w = torch.nn.grad.conv2d_weight(x * s, weight.shape, grad, padding=ctx.padding)
        return grad_x, grad_scale, grad_w, None

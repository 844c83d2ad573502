"""Filtered leaky ReLU: bias, upsample, leaky ReLU (gain, clamp), downsample, all polyphase.

The upsampled intermediate is the largest tensor of the network (up**2 times the layer's
size). On CPU, allocating it fresh each time costs more than the arithmetic (large blocks are
mapped and page-faulted anew), so the op runs on chunks of the batch (and of the channels,
for big images): the op is depthwise, so chunks are independent and the result is identical,
while each intermediate stays small enough to be recycled by the allocator and to stay in cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import compiled
from .bias_act import clamp_for_autograd, clamp_is_idle
from .lean import LeanFilteredLReLU, lean_mode, use_lean
from .upfirdn2d import Padding, upfirdn2d

# Largest intermediate (bytes) one chunk may create; chunks never go below one sample and
# CHANNEL_GROUP channels (a SIMD-friendly channel count in channels_last).
CHUNK_BYTES = 12 * 2**20
CHANNEL_GROUP = 16


def _grad_needed(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _filtered_lrelu_whole(
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
    lean: bool = False,
) -> torch.Tensor:
    """The op on one chunk (``lean``: through LeanFilteredLReLU)."""
    if lean:
        return LeanFilteredLReLU.apply(x, b, fu, fd, up, down, padding, gain, slope, clamp)
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    x_in = x
    owned = b is not None
    if fu is not None or up != 1 or any(padding):
        x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)
        owned = True
    if slope != 1:
        # In place on a tensor this op created: leaky_relu_'s backward uses its result, which is fine.
        x = F.leaky_relu_(x, slope) if owned else F.leaky_relu(x, slope)
        owned = True
    if clamp is not None and clamp >= 0 and not clamp_is_idle(x_in, fu, up, slope, clamp / gain):
        bound = clamp / gain
        x = x.clamp_(-bound, bound) if owned and not _grad_needed(x) else clamp_for_autograd(x, bound)
    if fd is None and down == 1:
        return x * gain if gain != 1 else x
    return upfirdn2d(x, fd, down=down, gain=gain)


def filtered_lrelu(
    x: torch.Tensor,  # [N, C, H, W]
    fu: torch.Tensor | None,  # upsampling filter, [K] or [K, K]; None: identity
    fd: torch.Tensor | None,  # downsampling filter, [K] or [K, K]; None: identity
    b: torch.Tensor | None = None,  # [C] bias added before upsampling
    up: int = 1,  # upsampling factor
    down: int = 1,  # downsampling factor
    padding: Padding = (0, 0, 0, 0),  # padding in the upsampled domain
    gain: float = math.sqrt(2),  # gain after the activation (must be > 0)
    slope: float = 0.2,  # leaky ReLU slope (> 0)
    clamp: float | None = None,  # clamp after gain
    lean: bool | None = None,  # the lean autograd path; None: decided here (see lean.use_lean)
) -> torch.Tensor:
    """Same result as `reference.ref_filtered_lrelu`.

    The gain commutes with the (positively homogeneous) activation, so it is folded into the
    downsampling filter and the clamp bound is divided by it: one fewer pass over the largest
    tensor of the network.
    """
    args = (fu, fd)
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    per_channel = max(1, (h * up + py0 + py1) * (w * up + px0 + px1)) * x.element_size()
    constant_filters = not (fu is not None and fu.requires_grad or fd is not None and fd.requires_grad)
    if lean is None:  # decided for the whole op, not per chunk
        lean = use_lean(x, b, nbytes=n * c * per_channel)
    lean = lean and constant_filters
    # CUDA: the Triton kernels (compiled.py, memory-lean themselves), where they passed their
    # self-check, unless autograd over the composite ops was asked for (lean_autograd(False))
    if constant_filters and compiled.may_run_on(x.device):
        grad = _grad_needed(x, b)
        if (not grad or lean_mode() is not False) and compiled.usable(
            x, b, *args, up, down, padding, gain, slope, clamp
        ):
            if grad:
                return compiled.CompiledFilteredLReLU.apply(x, b, fu, fd, up, down, padding, gain, slope, clamp)
            return compiled.forward(x, b, fu, fd, up, down, padding, gain, slope, clamp, keep_codes=False)[0]
    kw = dict(up=up, down=down, padding=padding, gain=gain, slope=slope, clamp=clamp, lean=lean)
    if n * c * per_channel <= CHUNK_BYTES or (fu is None and fd is None) or x.device.type != "cpu":
        return _filtered_lrelu_whole(x, *args, b, **kw)
    if c * per_channel <= CHUNK_BYTES:  # whole samples per chunk
        step = max(1, CHUNK_BYTES // (c * per_channel))
        return torch.cat([_filtered_lrelu_whole(xc, *args, b, **kw) for xc in x.split(step)])
    group = max(CHANNEL_GROUP, CHUNK_BYTES // per_channel // CHANNEL_GROUP * CHANNEL_GROUP)
    bs = b.split(group) if b is not None else [None] * math.ceil(c / group)
    # a channel slice of a channels_last tensor is in no layout the kernels take: each would copy it
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    rows = []
    for xs in x.split(1):
        chunks = [xc.contiguous(memory_format=fmt) for xc in xs.split(group, dim=1)]
        parts = [_filtered_lrelu_whole(xc, *args, bc, **kw) for xc, bc in zip(chunks, bs, strict=True)]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)

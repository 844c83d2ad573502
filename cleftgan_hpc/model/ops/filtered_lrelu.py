"""Filtered leaky ReLU: bias, upsample, leaky ReLU (gain, clamp), downsample, all polyphase."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .upfirdn2d import Padding, upfirdn2d


def filtered_lrelu(
    x: torch.Tensor,  # [N, C, H, W]
    fu: torch.Tensor | None,  # upsampling filter, [K] or [K, K]; None: identity
    fd: torch.Tensor | None,  # downsampling filter, [K] or [K, K]; None: identity
    b: torch.Tensor | None = None,  # [C] bias added before upsampling
    up: int = 1,  # upsampling factor
    down: int = 1,  # downsampling factor
    padding: Padding = (0, 0, 0, 0),  # padding in the upsampled domain
    gain: float = math.sqrt(2),  # gain after the activation (must be > 0)
    slope: float = 0.2,  # leaky ReLU slope
    clamp: float | None = None,  # clamp after gain
) -> torch.Tensor:
    """Same result as `reference.ref_filtered_lrelu`.

    The gain commutes with the (positively homogeneous) activation, so it is folded into the
    downsampling filter and the clamp bound is divided by it: one fewer pass over the largest
    tensor of the network.
    """
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    if fu is not None or up != 1 or any(padding):
        x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)
    if slope != 1:
        x = F.leaky_relu(x, slope)
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp / gain, clamp / gain)
    if fd is None and down == 1:
        return x * gain if gain != 1 else x
    return upfirdn2d(x, fd, down=down, gain=gain)

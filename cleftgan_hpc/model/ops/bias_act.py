"""Bias + activation + gain + clamp, the fast way (fewest passes over memory)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bias_act(
    x: torch.Tensor,  # [N, C, ...] input
    b: torch.Tensor | None = None,  # [C] bias added along dim 1
    act: str = "linear",  # "linear" or "lrelu"
    alpha: float = 0.2,  # lrelu slope for negative inputs
    gain: float | None = None,  # output scale; None: sqrt(2) for lrelu, 1 for linear
    clamp: float | None = None,  # clamp the output to [-clamp, clamp]; None: no clamp
) -> torch.Tensor:
    """Same result as `reference.ref_bias_act`, fused where torch allows."""
    if b is not None:
        b = b.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        gain = math.sqrt(2) if gain is None else gain
        x = F.leaky_relu(x + b if b is not None else x, alpha)
    elif act == "linear":
        gain = 1.0 if gain is None else gain
        if b is not None:
            x = x + b
    else:
        raise ValueError(f"unknown activation {act!r}")
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x

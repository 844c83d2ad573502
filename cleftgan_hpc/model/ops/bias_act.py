"""Bias + activation + gain + clamp, the fast way (fewest passes over memory)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .upfirdn2d import peak_gain


def clamp_for_autograd(x: torch.Tensor, bound: float) -> torch.Tensor:
    """x.clamp(-bound, bound) for a tensor autograd tracks, skipped when nothing exceeds the bound.

    Skipping is exact (clamp's gradient is 1 inside the bounds, bounds included), and on CPU one
    read-only pass is much cheaper than clamp's forward plus its masked backward. On other
    devices the check would synchronise, so there we always clamp.
    """
    if x.device.type == "cpu" and bool(x.detach().abs().amax() <= bound):
        return x
    return x.clamp(-bound, bound)


def clamp_is_idle(x: torch.Tensor, fu: torch.Tensor | None, up: int, slope: float, bound: float) -> bool:
    """Whether clamping the activation of upsampled ``x`` at +-bound provably changes nothing,
    read from x (up**2 times smaller than what the clamp would pass over): |upsampled| is at
    most max|x| times the filter's peak gain, and the leaky ReLU scales by at most max(1, slope).
    Then skipping the clamp is exact (values and gradients). CPU only: elsewhere the check
    would wait for the device."""
    if x.device.type != "cpu" or not x.is_floating_point():
        return False
    x = x.detach()
    largest = max(float(x.amax()), -float(x.amin()))  # two reads: cheaper than abs() (a write) and one
    peak = largest * peak_gain(fu, up, up**2) * max(1.0, slope)
    return peak * (1 + 1e-4) <= bound  # the margin covers the rounding of the filter sums (also false for NaN)


def bias_act(
    x: torch.Tensor,  # [N, C, ...] input
    b: torch.Tensor | None = None,  # [C] bias added along dim 1
    act: str = "linear",  # "linear" or "lrelu"
    alpha: float = 0.2,  # lrelu slope for negative inputs
    gain: float | None = None,  # output scale; None: sqrt(2) for lrelu, 1 for linear
    clamp: float | None = None,  # clamp the output to [-clamp, clamp]; None: no clamp
) -> torch.Tensor:
    """Same result as `reference.ref_bias_act`, fused where torch allows."""
    grad = torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))
    owned = False  # whether x is a tensor this function created (safe to modify in place)
    if b is not None:
        x = x + b.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
        owned = True
    if act == "lrelu":
        gain = math.sqrt(2) if gain is None else gain
        # leaky_relu_'s backward needs only its result, so in place is fine even with autograd.
        x = F.leaky_relu_(x, alpha) if owned else F.leaky_relu(x, alpha)
        owned = True
    elif act == "linear":
        gain = 1.0 if gain is None else gain
    else:
        raise ValueError(f"unknown activation {act!r}")
    inplace = owned and not grad
    if gain != 1:
        x = x.mul_(gain) if inplace else x * gain
        owned = True
        inplace = not grad
    if clamp is not None and clamp >= 0:
        x = x.clamp_(-clamp, clamp) if inplace else clamp_for_autograd(x, clamp)
    return x

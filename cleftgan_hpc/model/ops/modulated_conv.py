"""Modulated convolution with demodulation, applied to the activations (one shared-weight conv).

conv(x, w * s) * d == conv(x * s, w) * d for per-sample input scales s and output scales d, so
the batch runs through one ordinary convolution instead of N grouped ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modulated_conv2d(
    x: torch.Tensor,  # [N, I, H, W] input
    weight: torch.Tensor,  # [O, I, k, k] shared weight
    styles: torch.Tensor,  # [N, I] per-sample input scales
    demodulate: bool = True,  # normalise each output filter to unit norm
    padding: int = 0,  # zero padding of the convolution
    input_gain: torch.Tensor | None = None,  # [] or [I] extra input scale
    bias: torch.Tensor | None = None,  # [O] optional bias added after the convolution
) -> torch.Tensor:
    """Same result as `reference.ref_modulated_conv2d` (+ bias), modulating activations."""
    n = x.shape[0]
    o, i = weight.shape[:2]
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    scale = styles if input_gain is None else styles * input_gain.expand(n, i)
    dcoefs = None
    if demodulate:
        # sum_{i,k} (w[o,i,k] s[n,i])^2 = (s^2 @ sum_k w^2 ^T)[n, o]
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]
    x = x * scale.to(x.dtype).reshape(n, i, 1, 1)
    x = F.conv2d(x, weight.to(x.dtype), padding=padding)
    if dcoefs is not None and bias is not None:
        return torch.addcmul(bias.to(x.dtype).reshape(1, o, 1, 1), x, dcoefs.to(x.dtype).reshape(n, o, 1, 1))
    if dcoefs is not None:
        x = x * dcoefs.to(x.dtype).reshape(n, o, 1, 1)
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, o, 1, 1)
    return x

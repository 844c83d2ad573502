"""Modulated convolution with demodulation, applied to the activations (one shared-weight conv).

conv(x, w * s) * d == conv(x * s, w) * d for per-sample input scales s and output scales d, so
the batch runs through one ordinary convolution instead of N grouped ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .lean import ModulatedConv, use_lean


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
    if demodulate:
        styles = styles * styles.square().mean().rsqrt()
    lean = use_lean(x, styles, weight, nbytes=x.numel() * x.element_size())
    return _modconv_prenormalised(x, weight, styles, demodulate, padding, input_gain, bias, lean)


# Batch chunk size target (bytes of one chunk's convolution output) for the fused layer op.
LAYER_CHUNK_BYTES = 16 * 2**20


def modulated_filtered_lrelu(
    x: torch.Tensor,  # [N, I, H, W] input
    weight: torch.Tensor,  # [O, I, k, k] shared weight
    styles: torch.Tensor,  # [N, I] per-sample input scales
    demodulate: bool,  # normalise each output filter to unit norm
    conv_padding: int,  # zero padding of the convolution
    input_gain: torch.Tensor | None,  # [] or [I] extra input scale
    bias: torch.Tensor | None,  # [O] bias (added before upsampling)
    fu: torch.Tensor | None,  # upsampling filter
    fd: torch.Tensor | None,  # downsampling filter
    up: int,  # upsampling factor
    down: int,  # downsampling factor
    padding: tuple[int, int, int, int],  # filtered_lrelu padding (upsampled domain)
    gain: float,  # gain after the activation
    slope: float,  # leaky ReLU slope
    clamp: float | None,  # clamp after gain
) -> torch.Tensor:
    """One StyleGAN3 synthesis layer's ops: modulated conv, then filtered leaky ReLU.

    Runs over chunks of the batch so no intermediate is large (see filtered_lrelu.py). The
    style normalisation of demodulation is a mean over the whole batch, so it is done once,
    before chunking; the chunked result equals the unchunked one.
    """
    from .filtered_lrelu import filtered_lrelu

    if demodulate:
        styles = styles * styles.square().mean().rsqrt()
    n, _, h, w = x.shape
    o, k = weight.shape[0], weight.shape[-1]
    per_sample = o * (h + 2 * conv_padding - k + 1) * (w + 2 * conv_padding - k + 1) * x.element_size()
    step = max(1, LAYER_CHUNK_BYTES // max(1, per_sample)) if x.device.type == "cpu" else n  # a CPU concern
    # decided for the whole layer (its chunks are small): by the input and by the upsampled tensor
    lean = use_lean(x, styles, weight, nbytes=x.numel() * x.element_size())
    px0, px1, py0, py1 = padding
    h_out, w_out = h + 2 * conv_padding - k + 1, w + 2 * conv_padding - k + 1
    upsampled = n * o * (h_out * up + py0 + py1) * (w_out * up + px0 + px1) * x.element_size()
    lean_act = use_lean(x, styles, weight, bias, nbytes=upsampled)
    outs = []
    for i in range(0, n, step):
        y = _modconv_prenormalised(
            x[i : i + step], weight, styles[i : i + step], demodulate, conv_padding, input_gain, bias, lean
        )
        outs.append(filtered_lrelu(y, fu, fd, None, up, down, padding, gain, slope, clamp, lean=lean_act))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _modconv_prenormalised(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool,
    padding: int,
    input_gain: torch.Tensor | None,
    bias: torch.Tensor | None,
    lean: bool = False,
) -> torch.Tensor:
    """modulated_conv2d for styles already normalised by their batch mean square (``lean``:
    through ModulatedConv, which keeps x rather than its modulated copy for backward)."""
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        if x.dtype == torch.float16:
            # Keep the un-demodulated conv output inside float16's range; per-filter and
            # per-sample scales cancel in the demodulation.
            weight = weight * (1 / math.sqrt(i * kh * kw) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
            styles = styles / styles.abs().amax(dim=1, keepdim=True)
    scale = styles if input_gain is None else styles * input_gain.expand(n, i)
    if lean:
        x = ModulatedConv.apply(x, scale.to(x.dtype), weight.to(x.dtype), padding)
    else:
        x = x * scale.to(x.dtype).reshape(n, i, 1, 1)
        x = F.conv2d(x, weight.to(x.dtype), padding=padding)
    if demodulate:
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]
        d = dcoefs.to(x.dtype).reshape(n, o, 1, 1)
        grad = torch.is_grad_enabled() and (x.requires_grad or d.requires_grad)
        if bias is None:
            return x * d if grad else x.mul_(d)
        b = bias.to(x.dtype).reshape(1, o, 1, 1)
        return torch.addcmul(b, x, d) if grad else torch.addcmul(b, x, d, out=x)  # one pass, in place
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, o, 1, 1)
    return x

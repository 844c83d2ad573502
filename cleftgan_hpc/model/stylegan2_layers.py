"""The StyleGAN2 synthesis layers: modulated 3x3 convolution (optionally 2x up), noise, ToRGB.

Each layer runs in one of two ways, with the same results:

* plain (inside `ops.plain_ops()`): the textbook order, as the reference writes it: upsample by
  zero insertion and FIR filtering, then the per-sample (grouped) modulated convolution, then
  noise, bias, activation, gain and clamp, each a separate step (`ops` plain versions);
* fast (default): the modulation applied to the activations (one shared-weight convolution for
  the batch), the 2x upsampling convolution as a stride-2 transposed convolution followed by the
  FIR filter (no multiplications by inserted zeros), the activation gain folded into the
  demodulation, bias + constant noise added as one precomputed map, and the ToRGB 1x1
  convolution as one small matrix product per sample (its weight modulated, not its input).

Everything is built from differentiable torch ops, so double backward works (path-length
regularisation differentiates through the generator).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .filters import setup_resample_filter
from .layers import FullyConnectedLayer
from .ops.bias_act import clamp_for_autograd

NOISE_MODES = ("const", "random", "none")


def upfir_padding(fw: int, up: int) -> tuple[int, int]:
    """Padding (before, after) of a factor-`up` FIR upsampling with a `fw`-tap filter, output = up * input."""
    return (fw + up - 1) // 2, (fw - up) // 2


def _fp16_prenormalise(weight: torch.Tensor, styles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales that cancel in the demodulation, keeping a float16 convolution inside float16's range."""
    o, i, kh, kw = weight.shape
    weight = weight * (1 / math.sqrt(i * kh * kw) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
    styles = styles / styles.abs().amax(dim=1, keepdim=True)
    return weight, styles


def modulated_conv2d_up2(
    x: torch.Tensor,  # [N, I, H, W]
    weight: torch.Tensor,  # [O, I, k, k]
    styles: torch.Tensor,  # [N, I]
    f: torch.Tensor,  # FIR filter of the upsampling ([K, K]; or [K], applied separably)
    demodulate: bool = True,  # normalise each sample's output filters
    gain: float = 1.0,  # output scale (the activation gain, folded in)
    add: torch.Tensor | None = None,  # added to the result (bias and noise, times gain), fused with the scaling
) -> torch.Tensor:  # [N, O, 2H, 2W]
    """StyleGAN2's modulated convolution with 2x upsampling, the fast way.

    Equal to: zero insertion, FIR filter (gain 4), then a true (flipped-kernel) convolution
    with the per-sample modulated and demodulated weight, padded to keep 2H x 2W. Here: the
    activations are modulated, one stride-2 transposed convolution (the polyphase form of zero
    insertion + convolution) runs for the whole batch, then the FIR filter and the
    demodulation (times `gain`) follow; all of these commute. `add` joins the last step.
    """
    n, i = x.shape[:2]
    o, _, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        weight, styles = _fp16_prenormalise(weight, styles)
    y = F.conv_transpose2d(x * styles.to(x.dtype).reshape(n, i, 1, 1), weight.transpose(0, 1).to(x.dtype), stride=2)
    # Pad (or crop) the transposed conv's output, (H - 1) * 2 + k long, so that the filtered
    # result is the reference's 2H samples: the same window of the same full convolution.
    fw = f.shape[-1]
    lo = kw // 2 + upfir_padding(fw, 2)[0] - kw + 1
    hi = fw + 1 - kw - lo
    y = ops.upfirdn2d(y, f, padding=(lo, hi, lo, hi), gain=4)
    if demodulate:
        scale = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt() * gain  # [N, O]
    else:
        scale = torch.full([n, o], gain, device=x.device)
    d = scale.to(y.dtype).reshape(n, o, 1, 1)
    if add is None:
        grad = torch.is_grad_enabled() and (y.requires_grad or d.requires_grad)
        return y * d if grad else y.mul_(d)
    if torch.is_grad_enabled() and (y.requires_grad or d.requires_grad or add.requires_grad):
        return torch.addcmul(add, y, d)
    return torch.addcmul(add, y, d, out=y)  # one pass, in place


def plain_modulated_conv2d_up2(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, f: torch.Tensor, demodulate: bool = True
) -> torch.Tensor:
    """The same, the textbook way: FIR upsampling (zero insertion), then the per-sample convolution."""
    fw, kw = f.shape[-1], weight.shape[-1]
    p0, p1 = upfir_padding(fw, 2)
    pad = kw // 2
    x = ops.upfirdn2d(x, f, up=2, padding=(pad + p0, pad + p1, pad + p0, pad + p1), gain=4)
    return ops.modulated_conv2d(x, weight.flip([2, 3]), styles, demodulate=demodulate, padding=0)


def _finish(y: torch.Tensor, add: torch.Tensor | None, lrelu: bool, clamp: float | None) -> torch.Tensor:
    """y + add, leaky ReLU, clamp: in place on y (the caller's fresh tensor) where autograd allows."""
    grad = torch.is_grad_enabled() and (y.requires_grad or (add is not None and add.requires_grad))
    if add is not None:
        y = y + add if grad else y.add_(add)
    if lrelu:
        y = F.leaky_relu_(y, 0.2)  # its backward needs only its result: in place is fine with autograd
    if clamp is not None and clamp >= 0:
        y = clamp_for_autograd(y, clamp) if grad else y.clamp_(-clamp, clamp)
    return y


class SynthesisLayer(nn.Module):
    """Modulated conv (optionally 2x up) -> noise -> bias -> activation (gain, clamp)."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # output channels
        w_dim: int,  # intermediate latent width
        resolution: int,  # output resolution
        kernel_size: int = 3,  # convolution kernel width
        up: int = 1,  # 1, or 2: upsample first
        use_noise: bool = True,  # per-pixel noise input with a learned strength
        activation: str = "lrelu",  # "lrelu" or "linear"
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # 1-D taps of the upsampling filter
        conv_clamp: float | None = None,  # clamp the output to +-conv_clamp; None: off
    ) -> None:
        super().__init__()
        if up not in (1, 2):
            raise ValueError(f"up must be 1 or 2, got {up}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (the output would not keep its size), got {kernel_size}")
        if activation not in ("lrelu", "linear"):
            raise ValueError(f"unknown activation {activation!r}")
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = math.sqrt(2) if activation == "lrelu" else 1.0
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", setup_resample_filter(list(resample_filter)))

    def forward(
        self,
        x: torch.Tensor,  # [N, in_channels, resolution / up, resolution / up]
        w: torch.Tensor,  # [N, w_dim]
        noise_mode: str = "random",  # "const", "random" or "none"
        noise: torch.Tensor | None = None,  # [N, 1, res, res] drawn noise for "random" (None: draw here)
        gain: float = 1.0,  # extra output gain (resnet blocks)
    ) -> torch.Tensor:  # [N, out_channels, resolution, resolution]
        styles = self.affine(w)
        act_gain = self.act_gain * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        noise_term = None
        if self.use_noise and noise_mode == "random":
            if noise is None:
                noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise_term = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise_term = self.noise_const * self.noise_strength
        if ops.using_plain_ops():
            if self.up == 1:
                y = ops.modulated_conv2d(x, self.weight, styles, demodulate=True, padding=self.padding)
            else:
                y = plain_modulated_conv2d_up2(x, self.weight, styles, self.resample_filter)
            if noise_term is not None:
                y = y + noise_term.to(y.dtype)
            return ops.bias_act(y, self.bias.to(y.dtype), act=self.activation, gain=act_gain, clamp=clamp)
        # Fast: the gain commutes with the conv, noise, bias and the (positively homogeneous)
        # activation, so it scales the demodulation and the added map instead of a pass of its own.
        lrelu = self.activation == "lrelu"
        if self.up == 1:
            g = torch.full([], act_gain, device=x.device)
            y = ops.modulated_conv2d(x, self.weight, styles, demodulate=True, padding=self.padding, input_gain=g)
            return _finish(y, self._added(noise_term, act_gain, y), lrelu, clamp)
        y = modulated_conv2d_up2(
            x, self.weight, styles, self.resample_filter, gain=act_gain, add=self._added(noise_term, act_gain, x)
        )
        return _finish(y, None, lrelu, clamp)

    def _added(self, noise_term: torch.Tensor | None, act_gain: float, y: torch.Tensor) -> torch.Tensor:
        """(bias + noise) * gain, in y's dtype and memory format (a layout mismatch costs 5-10x)."""
        if noise_term is None:
            return (self.bias * act_gain).to(y.dtype).reshape(1, -1, 1, 1)
        if noise_term.ndim == 2 and y.is_contiguous(memory_format=torch.channels_last):
            # [1, O, R, R] laid out channels-last: made as [R, R, O] and viewed, no transposing copy
            add = (noise_term.unsqueeze(2) + self.bias) * act_gain
            return add.to(y.dtype).permute(2, 0, 1).unsqueeze(0)
        return ((noise_term.reshape(-1, 1, *noise_term.shape[-2:]) + self.bias.reshape(1, -1, 1, 1)) * act_gain).to(
            y.dtype
        )

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, res={self.resolution}, up={self.up}, "
            f"noise={self.use_noise}, act={self.activation}"
        )


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation, bias, clamp: features -> image channels (unpadded,
    as the reference: a kernel_size above 1 shrinks the output, so blocks use 1)."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # image channels
        w_dim: int,  # intermediate latent width
        kernel_size: int = 1,  # convolution kernel width
        conv_clamp: float | None = None,  # clamp the output; None: off
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim, self.conv_clamp = in_channels, out_channels, w_dim, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [N, I, H, W] -> [N, O, H, W]
        styles = self.affine(w) * self.weight_gain
        if ops.using_plain_ops():
            y = ops.modulated_conv2d(x, self.weight, styles, demodulate=False)
            return ops.bias_act(y, self.bias.to(y.dtype), clamp=self.conv_clamp)
        n, i, h, w_ = x.shape
        if self.weight.shape[-1] == 1 and x.is_contiguous(memory_format=torch.channels_last):
            # A 1x1 conv to a few channels is a matrix product per sample: modulate the small
            # weight ([N, O, I]) instead of the activations, and read x once, in place.
            weight = (self.weight[:, :, 0, 0].unsqueeze(0) * styles.unsqueeze(1)).to(x.dtype)  # [N, O, I]
            pixels = x.permute(0, 2, 3, 1).reshape(n, h * w_, i)  # a view of channels-last memory
            y = torch.bmm(pixels, weight.transpose(1, 2))  # [N, H*W, O]
            y = y.reshape(n, h, w_, -1).permute(0, 3, 1, 2)  # [N, O, H, W], channels-last
            return _finish(y, self.bias.to(y.dtype).reshape(1, -1, 1, 1), False, self.conv_clamp)
        y = ops.modulated_conv2d(x, self.weight, styles, demodulate=False, bias=self.bias)
        return _finish(y, None, False, self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}"


class UpsampleSkip(nn.Module):
    """The resnet block's skip path: 1x1 conv (no bias), then 2x FIR upsampling, times `gain`."""

    def __init__(self, in_channels: int, out_channels: int, resample_filter: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.register_buffer("resample_filter", setup_resample_filter(list(resample_filter)))
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:  # [N, I, H, W] -> [N, O, 2H, 2W]
        w = (self.weight * (self.weight_gain * gain)).to(x.dtype)
        f = self.resample_filter
        p0, p1 = upfir_padding(f.shape[-1], 2)
        return ops.upfirdn2d(F.conv2d(x, w), f, up=2, padding=(p0, p1, p0, p1), gain=4)

"""Basic layers with equalized learning rate: the raw parameters carry no gain, forward applies it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .filters import setup_resample_filter
from .ops.bias_act import clamp_for_autograd


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale x so its mean square along `dim` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(nn.Module):
    """y = act(x @ (W * lr_mul / sqrt(in)).T + b * lr_mul)."""

    def __init__(
        self,
        in_features: int,  # input width
        out_features: int,  # output width
        bias: bool = True,  # learn a bias
        activation: str = "linear",  # "linear" or "lrelu"
        lr_multiplier: float = 1.0,  # learning-rate multiplier (equalized lr)
        weight_init: float = 1.0,  # std of the initial (effective) weight
        bias_init: float | Sequence[float] = 0.0,  # initial (effective) bias, scalar or per output
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
        self.bias = nn.Parameter(torch.from_numpy(init / lr_multiplier).float()) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in] -> [N, out]
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return ops.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """StyleGAN2 convolution: optional FIR downsampling, bias, activation, gain and clamp."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # output channels
        kernel_size: int,  # square kernel width
        bias: bool = True,  # learn a bias
        activation: str = "linear",  # "linear" or "lrelu"
        down: int = 1,  # downsampling factor (1 or 2)
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # 1-D taps of the (outer-product) resampling filter
        conv_clamp: float | None = None,  # clamp the output to +-conv_clamp (times gain); None: off
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.down, self.conv_clamp = down, conv_clamp
        self.register_buffer("resample_filter", setup_resample_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = math.sqrt(2) if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:  # [N, I, H, W] -> [N, O, H/down, W/down]
        act_gain = self.act_gain * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        w = self.weight * self.weight_gain
        b = self.bias
        fold = not ops.using_plain_ops()
        if fold:
            # The gain commutes with the conv, the bias and the (positively homogeneous) activation:
            # fold it into the weight and bias, and let the conv add the bias (two fewer passes).
            w = w * act_gain
            b = b * act_gain if b is not None else None
        w = w.to(x.dtype)
        conv_b = b.to(x.dtype) if fold and b is not None else None
        if self.down > 1:
            f = self.resample_filter
            fw = f.shape[-1]
            p0 = self.padding + (fw - self.down + 1) // 2
            p1 = self.padding + (fw - self.down) // 2
            if w.shape[-1] == 1:  # downsample first, then the cheap 1x1 conv
                x = ops.upfirdn2d(x, f, down=self.down, padding=(p0, p1, p0, p1))
                x = F.conv2d(x, w, conv_b)
            else:
                x = ops.upfirdn2d(x, f, padding=(p0, p1, p0, p1))
                x = F.conv2d(x, w, conv_b, stride=self.down)
        else:
            x = F.conv2d(x, w, conv_b, padding=self.padding)
        if fold:
            # In place on the conv's fresh output: leaky_relu_'s backward needs only its result.
            if self.activation == "lrelu":
                x = F.leaky_relu_(x, 0.2)
            elif self.activation != "linear":
                raise ValueError(f"unknown activation {self.activation!r}")
            if clamp is not None and clamp >= 0:
                grad = torch.is_grad_enabled() and x.requires_grad
                x = clamp_for_autograd(x, clamp) if grad else x.clamp_(-clamp, clamp)
            return x
        return ops.bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, act={self.activation}, down={self.down}"

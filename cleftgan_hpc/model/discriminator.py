"""The StyleGAN2 residual discriminator (as used with StyleGAN3), optional projection conditioning."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from . import ops
from .layers import Conv2dLayer, FullyConnectedLayer
from .mapping import ConditionMapping


class DiscriminatorBlock(nn.Module):
    """fromRGB (first block only), conv0, conv1 (down 2), plus a 1x1 downsampling skip; outputs sum / sqrt(2)."""

    def __init__(
        self,
        in_channels: int,  # input channels (0: this block reads the image)
        tmp_channels: int,  # channels inside the block
        out_channels: int,  # output channels
        resolution: int,  # input resolution of this block
        img_channels: int,  # image channels
        first_layer_idx: int = 0,  # index of the first layer (for freezing)
        architecture: str = "resnet",  # only "resnet" is supported
        activation: str = "lrelu",  # activation
        resample_filter: tuple[float, ...] = (1, 3, 3, 1),  # downsampling filter taps
        conv_clamp: float | None = None,  # activation clamp
        use_fp16: bool = False,  # may run in low precision on CUDA
        fp16_channels_last: bool = False,  # accepted for compatibility (the network picks the memory format)
        freeze_layers: int = 0,  # freeze the first N layers of the discriminator
    ) -> None:
        super().__init__()
        if architecture != "resnet":
            raise ValueError(f"only the resnet discriminator is implemented, not {architecture!r}")
        self.in_channels, self.tmp_channels, self.out_channels = in_channels, tmp_channels, out_channels
        self.resolution, self.img_channels = resolution, img_channels
        self.first_layer_idx, self.use_fp16 = first_layer_idx, use_fp16
        del fp16_channels_last
        self.register_buffer("resample_filter", torch.outer(*(2 * [torch.tensor(resample_filter)])).float())
        self.resample_filter /= self.resample_filter.sum()
        self.num_layers = 0

        def trainable() -> bool:
            idx = first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation=activation, conv_clamp=conv_clamp)
            self.fromrgb.requires_grad_(trainable())
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation=activation, conv_clamp=conv_clamp)
        self.conv0.requires_grad_(trainable())
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, 3, activation=activation, down=2, resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )  # fmt: skip
        self.conv1.requires_grad_(trainable())
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)
        self.skip.requires_grad_(trainable())

    def forward(
        self,
        x: torch.Tensor | None,  # [N, in_channels, res, res] or None for the first block
        img: torch.Tensor,  # [N, img_channels, res, res]
        dtype: torch.dtype = torch.float32,  # compute dtype for this block
    ) -> torch.Tensor:  # [N, out_channels, res / 2, res / 2]
        if x is not None:
            x = x.to(dtype)
        if self.in_channels == 0:
            y = self.fromrgb(img.to(dtype))
            x = x + y if x is not None else y
        assert x is not None
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class MinibatchStdLayer(nn.Module):
    """Appends the mean (over features and pixels) std across groups of samples as extra channels."""

    def __init__(
        self,
        group_size: int | None,  # samples per group (None: the whole batch)
        num_channels: int = 1,  # number of std channels appended
    ) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C + F, H, W]
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise ValueError(f"batch size {n} must be a multiple of the mbstd group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n, F, c, H, W]: sample i is in group i % n
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n, F, c, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)  # [n, F, 1, 1]
        y = y.repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch std, conv, fc, out (projection with cmap when conditional)."""

    def __init__(
        self,
        in_channels: int,  # input channels
        cmap_dim: int,  # projection width (0: unconditional)
        resolution: int,  # input resolution (4)
        img_channels: int,  # image channels (unused by resnet)
        architecture: str = "resnet",  # only "resnet"
        mbstd_group_size: int | None = 4,  # minibatch std group size
        mbstd_num_channels: int = 1,  # minibatch std channels (0: off)
        activation: str = "lrelu",  # activation
        conv_clamp: float | None = None,  # activation clamp
    ) -> None:
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, 3, activation=activation, conv_clamp=conv_clamp
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:  # [N, C, 4, 4] -> [N, 1]
        x = x.to(torch.float32).contiguous()
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            assert cmap is not None
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """D(img, c) -> logits [N, 1]."""

    def __init__(
        self,
        c_dim: int,  # conditioning label width (0: unconditional)
        img_resolution: int,  # input resolution (power of two)
        img_channels: int,  # input channels
        architecture: str = "resnet",  # only "resnet"
        channel_base: int = 32768,  # overall channel multiplier
        channel_max: int = 512,  # maximal channels per layer
        num_fp16_res: int = 4,  # blocks at the highest resolutions that may use low precision (CUDA)
        conv_clamp: float | None = 256,  # activation clamp
        cmap_dim: int | None = None,  # projection width (default: channels at 4x4)
        low_precision_dtype: str = "float16",  # "float16" or "bfloat16" (CUDA only)
        channels_last: bool = True,  # run the blocks in channels_last memory format (faster on CPU)
        block_kwargs: dict[str, Any] | None = None,  # extra DiscriminatorBlock arguments (freeze_layers, ...)
        mapping_kwargs: dict[str, Any] | None = None,  # extra ConditionMapping arguments
        epilogue_kwargs: dict[str, Any] | None = None,  # extra DiscriminatorEpilogue arguments (mbstd_group_size)
    ) -> None:
        super().__init__()
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        block_kwargs, mapping_kwargs, epilogue_kwargs = (
            dict(block_kwargs or {}),
            dict(mapping_kwargs or {}),
            dict(epilogue_kwargs or {}),
        )
        self.init_kwargs: dict[str, Any] = dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=architecture,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
            cmap_dim=cmap_dim, low_precision_dtype=low_precision_dtype, channels_last=channels_last,
            block_kwargs=block_kwargs,
            mapping_kwargs=mapping_kwargs, epilogue_kwargs=epilogue_kwargs,
        )  # fmt: skip
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.low_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[low_precision_dtype]
        self.low_precision_on_cpu = False  # tests only: allow the low-precision path on CPU
        self.channels_last = channels_last
        log2 = int(np.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                channels[res] if res < img_resolution else 0, channels[res], channels[res // 2], resolution=res,
                img_channels=img_channels, first_layer_idx=layer_idx, architecture=architecture,
                conv_clamp=conv_clamp, use_fp16=res >= fp16_resolution, **block_kwargs,
            )  # fmt: skip
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = ConditionMapping(c_dim, cmap_dim, **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(
            channels[4], cmap_dim=cmap_dim, resolution=4, img_channels=img_channels, architecture=architecture,
            conv_clamp=conv_clamp, **epilogue_kwargs,
        )  # fmt: skip

    def forward(
        self,
        img: torch.Tensor,  # [N, img_channels, res, res]
        c: torch.Tensor | None = None,  # [N, c_dim] or None
        force_fp32: bool = False,  # never use low precision
        update_emas: bool = False,  # unused (API compatibility)
    ) -> torch.Tensor:  # [N, 1]
        del update_emas
        n = img.shape[0]
        step = n if ops.using_plain_ops() or img.device.type != "cpu" else self._batch_chunk(n)
        # The blocks treat samples independently: large images run in chunks of the batch so
        # every intermediate stays small (see ops/filtered_lrelu.py); the epilogue mixes samples.
        x = torch.cat([self._blocks(chunk, force_fp32) for chunk in img.split(step)]) if step < n else None
        if x is None:
            x = self._blocks(img, force_fp32)
        cmap = None
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"this discriminator is conditional: c must be [N, {self.c_dim}]")
            cmap = self.mapping(c)
        return self.b4(x, cmap)

    def _batch_chunk(self, n: int) -> int:
        """Samples per chunk so that no block's activation exceeds the chunk budget."""
        from .ops.modulated_conv import LAYER_CHUNK_BYTES

        largest = max(getattr(self, f"b{res}").tmp_channels * res * res * 4 for res in self.block_resolutions)
        return max(1, min(n, LAYER_CHUNK_BYTES // largest))

    def _blocks(self, img: torch.Tensor, force_fp32: bool) -> torch.Tensor:
        """All blocks down to 4x4: [n, C, res, res] -> [n, C4, 4, 4]."""
        if self.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        x = None
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            on_device = img.device.type == "cuda" or self.low_precision_on_cpu
            low = block.use_fp16 and not force_fp32 and on_device
            x = block(x, img, dtype=self.low_dtype if low else torch.float32)
        assert x is not None
        return x

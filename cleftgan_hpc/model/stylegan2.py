"""The StyleGAN2 generator (the paper's baseline), with the reference's call semantics.

Mapping network (ours, shared with StyleGAN3: 8 layers by default here), then synthesis blocks
from 4x4 up: a learned constant, two modulated 3x3 convolutions a block (the first upsampling,
one at 4x4), per-pixel noise with a learned strength, and the `skip` output architecture
(a ToRGB per block, the image upsampled and summed). `orig` (ToRGB at the end only) and
`resnet` (a residual 1x1 skip per block) are supported too. State-dict names equal the
reference's, so its pickles load tensor by tensor (official_pickle.py).

    G = StyleGAN2Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3)
    ws = G.mapping(z, c, truncation_psi=0.7)      # [N, num_ws, w_dim]
    img = G.synthesis(ws, noise_mode="const")      # [N, 3, 256, 256]

`noise_mode` is "const" (the stored noise buffers: deterministic, the default here, as in the
reference's image scripts), "random" (fresh noise from torch's generator, as in training; drawn
in the reference's order, so a torch seed gives the reference's images; or from
`noise_generator` when given, as training draws it) or "none".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import ops
from .filters import setup_resample_filter
from .mapping import MappingNetwork
from .stylegan2_layers import NOISE_MODES, SynthesisLayer, ToRGBLayer, UpsampleSkip, upfir_padding

ARCHITECTURES = ("orig", "skip", "resnet")
MAPPING_LAYERS = 8  # the StyleGAN2 mapping depth (StyleGAN3: 2)


class SynthesisBlock(nn.Module):
    """One resolution: [const | conv0 (2x up)], conv1, and ToRGB (skip/last) with the image path."""

    def __init__(
        self,
        in_channels: int,  # input channels (0: the first block, starting from the constant)
        out_channels: int,  # output channels
        w_dim: int,  # intermediate latent width
        resolution: int,  # output resolution of this block
        img_channels: int,  # image channels
        is_last: bool,  # the last (highest-resolution) block?
        architecture: str = "skip",  # "orig", "skip" or "resnet"
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # 1-D taps of the upsampling filter
        conv_clamp: float | None = 256,  # activation clamp
        use_fp16: bool = False,  # may run in low precision on CUDA
        fp16_channels_last: bool = False,  # accepted for compatibility (the network picks the memory format)
        fused_modconv_default: bool | str = True,  # accepted for compatibility (no effect on results)
        **layer_kwargs: Any,  # SynthesisLayer arguments (kernel_size, use_noise, activation)
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        del fp16_channels_last, fused_modconv_default
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.img_channels, self.is_last = resolution, img_channels, is_last
        self.architecture, self.use_fp16 = architecture, use_fp16
        self.register_buffer("resample_filter", setup_resample_filter(list(resample_filter)))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=2, resample_filter=resample_filter,
                conv_clamp=conv_clamp, **layer_kwargs,
            )  # fmt: skip
            self.num_conv += 1
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp, **layer_kwargs
        )
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = UpsampleSkip(in_channels, out_channels, resample_filter)

    def layers(self) -> list[SynthesisLayer]:
        """The block's synthesis layers, in the order they run (and draw random noise)."""
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]

    def forward(
        self,
        x: torch.Tensor | None,  # [N, in_channels, res / 2, res / 2] (None for the first block)
        img: torch.Tensor | None,  # [N, img_channels, res / 2, res / 2] float32 (None: none yet)
        ws: torch.Tensor,  # [N, num_conv + num_torgb, w_dim]
        dtype: torch.dtype,  # compute dtype of this block
        memory_format: torch.memory_format,  # memory format of the activations
        noise_mode: str,  # "const", "random" or "none"
        noises: list[torch.Tensor | None],  # drawn noise per layer (random mode), else Nones
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        w_iter = iter(ws.unbind(dim=1))
        n_iter = iter(noises)
        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.contiguous(memory_format=memory_format)
            x = self.conv1(x, next(w_iter), noise_mode, next(n_iter))
        else:
            assert x is not None
            x = x.to(dtype=dtype, memory_format=memory_format)
            if self.architecture == "resnet":
                y = self.skip(x, gain=math.sqrt(0.5))
                x = self.conv0(x, next(w_iter), noise_mode, next(n_iter))
                x = self.conv1(x, next(w_iter), noise_mode, next(n_iter), gain=math.sqrt(0.5))
                x = y + x
            else:
                x = self.conv0(x, next(w_iter), noise_mode, next(n_iter))
                x = self.conv1(x, next(w_iter), noise_mode, next(n_iter))
        if img is not None:
            p0, p1 = upfir_padding(self.resample_filter.shape[-1], 2)
            img = ops.upfirdn2d(img, self.resample_filter, up=2, padding=(p0, p1, p0, p1), gain=4)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter)).to(torch.float32)
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


class StyleGAN2Synthesis(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, img_resolution, img_resolution]."""

    def __init__(
        self,
        w_dim: int,  # intermediate latent width
        img_resolution: int,  # output resolution (power of two >= 4)
        img_channels: int,  # output channels
        channel_base: int = 32768,  # overall channel multiplier
        channel_max: int = 512,  # maximal channels per block
        num_fp16_res: int = 4,  # blocks at the highest resolutions that may use low precision (CUDA)
        low_precision_dtype: str = "float16",  # "float16" or "bfloat16" (CUDA only)
        channels_last: bool = True,  # run the blocks in channels_last memory format (faster on CPU)
        **block_kwargs: Any,  # SynthesisBlock arguments (architecture, conv_clamp, ...) and layer arguments
    ) -> None:
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_fp16_res, self.channels_last = num_fp16_res, channels_last
        self.low_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[low_precision_dtype]
        self.low_precision_on_cpu = False  # tests only: allow the low-precision path on CPU
        log2 = int(np.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        if min(channels.values()) < 1:
            raise ValueError(f"channel_base {channel_base} leaves no channels at {img_resolution}x{img_resolution}")
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                is_last=res == img_resolution, use_fp16=res >= fp16_resolution, **block_kwargs,
            )  # fmt: skip
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def forward(
        self,
        ws: torch.Tensor,  # [N, num_ws, w_dim]
        update_emas: bool = False,  # accepted for the reference's call semantics (StyleGAN2 has none here)
        force_fp32: bool = False,  # never use low precision
        noise_mode: str = "const",  # "const" (stored noise), "random" (fresh noise) or "none"
        fused_modconv: bool | None = None,  # accepted for the reference's call semantics (no effect)
        noise_generator: torch.Generator | None = None,  # draws the "random" noise (None: torch's global one)
    ) -> torch.Tensor:  # [N, img_channels, img_resolution, img_resolution]
        del update_emas, fused_modconv
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        ws = ws.to(torch.float32)
        n = ws.shape[0]
        layers = [layer for block in self.blocks() for layer in block.layers()]
        noises: list[torch.Tensor | None] = [None] * len(layers)
        if noise_mode == "random":  # drawn up front, for the whole batch, in the reference's order
            noises = [self._noise([n, 1, layer.resolution, layer.resolution], ws.device, noise_generator)
                      if layer.use_noise else None for layer in layers]
        step = n
        if ws.device.type == "cpu" and not ops.using_plain_ops():
            step = self._batch_chunk(n)
        if step >= n:
            return self._run(ws, noise_mode, noises, force_fp32)
        # Large images on CPU: the whole stack one chunk of the batch at a time, so that every
        # intermediate stays small (cache, allocation); the samples are independent.
        outs = []
        for start in range(0, n, step):
            part = [x[start : start + step] if x is not None else None for x in noises]
            outs.append(self._run(ws[start : start + step], noise_mode, part, force_fp32))
        return torch.cat(outs)

    @staticmethod
    def _noise(shape: list[int], device: torch.device, gen: torch.Generator | None) -> torch.Tensor:
        if gen is None:
            return torch.randn(shape, device=device)
        return torch.randn(shape, generator=gen, device=gen.device).to(device)  # a seeded draw (training)

    def _batch_chunk(self, n: int) -> int:
        """Samples per chunk so that no layer's output exceeds the chunk budget."""
        from .ops.modulated_conv import LAYER_CHUNK_BYTES

        largest = max(b.out_channels * b.resolution**2 * 4 for b in self.blocks())
        return max(1, min(n, LAYER_CHUNK_BYTES // largest))

    def _run(
        self, ws: torch.Tensor, noise_mode: str, noises: list[torch.Tensor | None], force_fp32: bool
    ) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = img = None
        w_idx = layer_idx = 0
        for block in self.blocks():
            on_device = ws.device.type == "cuda" or self.low_precision_on_cpu
            dtype = self.low_dtype if block.use_fp16 and on_device and not force_fp32 else torch.float32
            count = len(block.layers())
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            block_noise = noises[layer_idx : layer_idx + count]
            x, img = block(x, img, block_ws, dtype, fmt, noise_mode, block_noise)
            w_idx += block.num_conv
            layer_idx += count
        assert img is not None
        return img.contiguous()


class StyleGAN2Generator(nn.Module):
    """G(z, c) -> image; G.mapping(z, c) -> ws; G.synthesis(ws) -> image (the reference's semantics)."""

    def __init__(
        self,
        z_dim: int,  # latent width
        c_dim: int,  # conditioning label width (0: unconditional)
        w_dim: int,  # intermediate latent width
        img_resolution: int,  # output resolution (power of two >= 4)
        img_channels: int,  # output channels
        mapping_kwargs: dict[str, Any] | None = None,  # MappingNetwork arguments (num_layers: 8 by default)
        **synthesis_kwargs: Any,  # StyleGAN2Synthesis / block / layer arguments
    ) -> None:
        super().__init__()
        mapping_kwargs = {"num_layers": MAPPING_LAYERS, **(mapping_kwargs or {})}
        self.init_kwargs: dict[str, Any] = dict(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping_kwargs=mapping_kwargs,
            **synthesis_kwargs,
        )
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = StyleGAN2Synthesis(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)

    def forward(
        self,
        z: torch.Tensor,  # [N, z_dim]
        c: torch.Tensor | None = None,  # [N, c_dim] or None
        truncation_psi: float = 1.0,  # truncation strength (1: none)
        truncation_cutoff: int | None = None,  # truncate only the first ws
        update_emas: bool = False,  # track w_avg (training)
        force_fp32: bool = False,  # never use low precision
        noise_mode: str = "const",  # "const", "random" (training) or "none"
        fused_modconv: bool | None = None,  # accepted for the reference's call semantics (no effect)
        noise_generator: torch.Generator | None = None,  # draws the "random" noise (None: torch's global one)
    ) -> torch.Tensor:  # [N, img_channels, H, W]
        ws = self.mapping(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas
        )
        return self.synthesis(
            ws, update_emas=update_emas, force_fp32=force_fp32, noise_mode=noise_mode, fused_modconv=fused_modconv,
            noise_generator=noise_generator,
        )

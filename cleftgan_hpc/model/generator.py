"""The StyleGAN3 generator: mapping + synthesis, with the reference's call semantics."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .mapping import MappingNetwork
from .synthesis import SynthesisNetwork


class Generator(nn.Module):
    """G(z, c) -> image; G.mapping(z, c) -> ws; G.synthesis(ws) -> image."""

    def __init__(
        self,
        z_dim: int,  # latent width
        c_dim: int,  # conditioning label width (0: unconditional)
        w_dim: int,  # intermediate latent width
        img_resolution: int,  # output resolution (power of two, 16..1024)
        img_channels: int,  # output channels
        mapping_kwargs: dict[str, Any] | None = None,  # extra MappingNetwork arguments (num_layers, ...)
        **synthesis_kwargs: Any,  # SynthesisNetwork arguments (channel_base, conv_kernel, ...)
    ) -> None:
        super().__init__()
        if img_resolution < 16 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 16, got {img_resolution}")
        mapping_kwargs = dict(mapping_kwargs or {})
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
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)

    def forward(
        self,
        z: torch.Tensor,  # [N, z_dim]
        c: torch.Tensor | None = None,  # [N, c_dim] or None
        truncation_psi: float = 1.0,  # truncation strength (1: none)
        truncation_cutoff: int | None = None,  # truncate only the first ws
        update_emas: bool = False,  # track w_avg / magnitude_ema (training)
        force_fp32: bool = False,  # never use low precision
        noise_mode: str = "const",  # accepted for compatibility with StyleGAN2 callers; StyleGAN3 has no noise
    ) -> torch.Tensor:  # [N, img_channels, H, W]
        del noise_mode
        ws = self.mapping(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas
        )
        return self.synthesis(ws, update_emas=update_emas, force_fp32=force_fp32)

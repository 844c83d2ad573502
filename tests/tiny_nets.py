"""Tiny random StyleGAN3 generators saved as our network files, for tests that need a network."""

from __future__ import annotations

from pathlib import Path


def save_tiny_generator(path: Path, *, resolution: int = 16, c_dim: int = 0, channels: int = 3, seed: int = 0) -> Path:
    """A generator with 16-wide latents and at most 16 channels (tens of images a second on a CPU core)."""
    import torch

    from cleftgan_hpc.model import Generator, Network, save_checkpoint

    torch.manual_seed(seed)
    g = Generator(16, c_dim, 16, resolution, channels, channel_base=256, channel_max=16, num_fp16_res=0)
    save_checkpoint(Network(G=g, G_ema=g), path)
    return path

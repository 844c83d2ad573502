"""StyleGAN3 and StyleGAN2 networks of our own: generators, discriminator, ops, and safe loading of network files.

    from cleftgan_hpc.model import load_network
    net = load_network("stylegan3-t-ffhq-1024x1024.pkl")   # official StyleGAN2/3 pickle or our .safetensors
    img = net.G_ema(z, None, truncation_psi=0.7)            # [N, 3, H, W], about [-1, 1]

Names are imported lazily, so `cleftgan_hpc.model.commands` can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import Network, load_checkpoint, save_checkpoint
    from .discriminator import Discriminator
    from .generator import Generator
    from .loading import load_network
    from .stylegan2 import StyleGAN2Generator

_LAZY = {
    "Network": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Discriminator": "discriminator",
    "Generator": "generator",
    "load_network": "loading",
    "StyleGAN2Generator": "stylegan2",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Discriminator",
    "Generator",
    "Network",
    "StyleGAN2Generator",
    "load_checkpoint",
    "load_network",
    "save_checkpoint",
]

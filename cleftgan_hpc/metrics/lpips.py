"""The LPIPS network that PPL measures image distances with, loaded from a TorchScript file.

The standard is NVIDIA's TorchScript VGG16 LPIPS (``vgg16.pt``): called as
``model(images, resize_images=False, return_lpips=True)`` with float images [N, 3, H, W] in
[0, 255], it returns features [N, D] whose squared difference, summed over D, is the LPIPS
distance of two images. Nothing here downloads: a missing file is a clear error that says how
to stage it.

For tests and the demo the project makes its own small network (``save_tiny_lpips``): fixed
random-weight convs with a documented seed, saved as TorchScript with the same calling
convention, so the same loading and calling code is exercised.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics.features import ScriptedModel, load_scripted, random_conv, save_scripted

LPIPS_FILENAME = "vgg16.pt"
LPIPS_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
TINY_LPIPS_SEED = 20251127  # the project's tiny LPIPS: weights drawn from torch.Generator(seed)

LPIPS_STAGING_HELP = (
    f"LPIPS networks are never downloaded at run time. Stage the standard one once, on a machine "
    f"with internet access:\n    curl -fLo {LPIPS_FILENAME} {LPIPS_URL}\n"
    f"then copy it to storage the job can read (a shared filesystem path, or the job's store as "
    f"store:KEY) and name it in the evaluate stage's `lpips:`. 'demo' there uses our small "
    f"stand-in (tests and demos; `cleftgan_hpc.metrics.lpips.save_tiny_lpips(path)` writes it)."
)


class LPIPSNet(ScriptedModel):
    """A loaded LPIPS network: ``features(images) -> [N, D]``, ``distance(a, b) -> [N]``."""

    what = "LPIPS network"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Float [N, C, H, W] in [0, 255], C in (1, 3) -> float32 [N, D] on the network's device."""
        images = self.rgb(images, uint8=False)
        out = self.module(images.to(self.device, torch.float32), resize_images=False, return_lpips=True)
        return self.check_features(out, images.shape[0])

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance [N] between image batches ``a`` and ``b`` (float [N, C, H, W] in [0, 255])."""
        if a.shape != b.shape:
            raise CleftGanError(f"LPIPS distance needs batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        fa, fb = self.features(torch.cat([a, b])).chunk(2)  # one call: half the launches
        return (fa - fb).square().sum(1)


def load_lpips(path: str | Path, device: str | torch.device = "cpu") -> LPIPSNet:
    """Load a TorchScript LPIPS network from ``path`` (never downloads)."""
    module, digest, p, dev = load_scripted(
        path, device, what="LPIPS network", staging_help=LPIPS_STAGING_HELP,
        expected=f"Expected a file such as {LPIPS_FILENAME} from {LPIPS_URL}.",
    )
    return LPIPSNet(module, digest=digest, path=str(p), device=dev)


class TinyLPIPS(torch.nn.Module):
    """A small fixed random-weight conv net standing in for ``vgg16.pt`` in tests and demos.

    LPIPS-like: images in [0, 255] -> [-1, 1] -> three conv + leaky-ReLU stages (stride 1, 2,
    2). With ``return_lpips`` each stage's activations are unit-normalised over channels,
    flattened and scaled by 1/sqrt(H*W) of that stage, then concatenated, so the summed squared
    difference of two images' features is the sum over stages of the spatial mean of squared
    normalised differences (LPIPS with all channel weights 1). Otherwise it returns the last
    stage's channel means [N, 32]. ``resize_images`` resizes to 64x64 first (the real network
    resizes to 224x224); PPL never asks for it. Random weights give a smooth image distance
    good enough for smoke tests; values are not comparable with the real PPL.
    """

    def __init__(self, seed: int = TINY_LPIPS_SEED) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w0, self.b0 = random_conv(g, 3, 8)
        self.w1, self.b1 = random_conv(g, 8, 16)
        self.w2, self.b2 = random_conv(g, 16, 32)

    def forward(self, images: torch.Tensor, resize_images: bool = False, return_lpips: bool = False) -> torch.Tensor:
        x = images.to(torch.float32) / 127.5 - 1  # [N, 3, H, W]
        if resize_images:
            x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        x = F.leaky_relu(F.conv2d(x, self.w0, self.b0, stride=1, padding=1), 0.2)  # full resolution, as VGG's
        f0 = _unit_features(x)
        x = F.leaky_relu(F.conv2d(x, self.w1, self.b1, stride=2, padding=1), 0.2)
        f1 = _unit_features(x)
        x = F.leaky_relu(F.conv2d(x, self.w2, self.b2, stride=2, padding=1), 0.2)
        if return_lpips:
            return torch.cat([f0, f1, _unit_features(x)], dim=1)
        return x.mean(dim=(2, 3))


def _unit_features(x: torch.Tensor) -> torch.Tensor:
    """Activations [N, C, H, W] unit-normalised over channels, flattened, scaled by 1/sqrt(H*W) so
    that squared-difference sums become spatial means whatever the image size."""
    unit = x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
    return unit.flatten(1) / math.sqrt(float(x.shape[2] * x.shape[3]))


def save_tiny_lpips(path: str | Path, seed: int = TINY_LPIPS_SEED) -> str:
    """Write the tiny LPIPS network as TorchScript to ``path``; return its digest (one per seed)."""
    return save_scripted(TinyLPIPS(seed), path)

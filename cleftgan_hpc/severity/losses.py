"""The image distances projection and adaptation minimise: LPIPS (with the staged network) and
mean squared pixel error, per image, differentiable w.r.t. the generated images.

Generated images are float [N, C, H, W] in about [-1, 1], targets the same. The LPIPS network is
called as the PPL code calls it (``model(images_0_255, resize_images=False, return_lpips=True)``
-> features whose summed squared difference is the distance), after a box downsample to at most
``size`` pixels (the reference projector compares at 256).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cleftgan_hpc.metrics.lpips import LPIPSNet


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Box-downsample square images larger than ``size`` by an integer factor (area average)."""
    res = images.shape[-1]
    if res <= size:
        return images
    factor = res // size
    return F.avg_pool2d(images, factor) if factor > 1 else images


@dataclass
class ImageLoss:
    """loss(generated, per-image) = lpips_weight * LPIPS + pixel_weight * MSE; targets set once."""

    lpips: LPIPSNet | None
    lpips_weight: float
    pixel_weight: float
    size: int = 256

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        assert self.lpips is not None
        x = downsample((images + 1) * 127.5, self.size)  # [-1, 1] -> [0, 255], as LPIPS expects
        x = self.lpips.rgb(x, uint8=False)
        out = self.lpips.module(x.to(self.lpips.device, torch.float32), resize_images=False, return_lpips=True)
        return self.lpips.check_features(out, images.shape[0])

    @property
    def uses_lpips(self) -> bool:
        return self.lpips is not None and self.lpips_weight > 0

    def target_features(self, targets: torch.Tensor) -> torch.Tensor | None:
        if not self.uses_lpips:
            return None
        with torch.no_grad():
            return self._features(targets)

    def __call__(
        self,
        generated: torch.Tensor,  # [N, C, H, W]
        targets: torch.Tensor,  # [N, C, H, W]
        target_features: torch.Tensor | None,  # from target_features(targets)
        keep: torch.Tensor | None = None,  # [N, 1, H, W] weights in [0, 1]: 0 ignores a pixel
    ) -> torch.Tensor:  # [N]
        total = generated.new_zeros(generated.shape[0])
        if self.pixel_weight > 0:
            sq = (generated - targets).square()
            if keep is not None:
                sq = sq * keep
            total = total + self.pixel_weight * sq.mean(dim=(1, 2, 3))
        if self.uses_lpips:
            seen = generated
            if keep is not None:  # ignored pixels show the target itself: no difference, no pull there
                seen = generated * keep + targets * (1 - keep)
            feats = target_features if target_features is not None else self.target_features(targets)
            assert feats is not None
            total = total + self.lpips_weight * (self._features(seen) - feats).square().sum(dim=1)
        return total

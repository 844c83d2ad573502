"""Model adaptation: tune a copy of the synthesis network's weights to one image at its projected
latents, so the generator reproduces the person (identity, lighting, details W+ could not
reach) but not the anomaly the index is meant to expose.

Three things hold it back from learning the anomaly (``AdaptationOptions``):

- few steps at a small learning rate (30 at 3e-4: a tenth of what pivotal tuning takes to fit
  an image fully);
- a pull back towards the original weights after every Adam step (weight decay towards the
  original instead of towards zero): ``w <- w + pull * (w0 - w)``. Adam moves a weight by about
  ``lr`` a step (its update is normalised; at most ``lr * (1 - beta1) / sqrt(1 - beta2)``, 3.2
  ``lr``), so a weight settles within about ``lr * (1 - pull) / pull`` of where it started
  (0.0057 with the defaults; 3.2 times that at the very worst);
- a loss that ignores the pixels the projection reproduced worst: the largest ``ignore_fraction``
  of the projection's difference map (blurred over ``resolution / 64`` pixels so the ignored
  region covers the anomaly's surroundings). For LPIPS those pixels show the target itself,
  so they pull nowhere; for the pixel loss they weigh 0.

Each image needs its own weights, so images are adapted one at a time, each from the original
weights (one working copy is reset between images); projection is what runs batched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cleftgan_hpc.context import StopRequested
from cleftgan_hpc.jobspec.kinds.severity import AdaptationOptions
from cleftgan_hpc.severity.heatmap import box_blur
from cleftgan_hpc.severity.losses import ImageLoss

STOP_CHECK_EVERY = 10


def keep_mask(error: torch.Tensor, ignore_fraction: float) -> torch.Tensor:
    """[N, H, W] projection error -> [N, 1, H, W] weights: 0 on the largest ``ignore_fraction`` of the
    blurred error (at least one pixel when the fraction is above 0), 1 elsewhere."""
    n, h, w = error.shape
    if ignore_fraction <= 0:
        return error.new_ones(n, 1, h, w)
    blurred = box_blur(error, max(1, h // 64)).reshape(n, -1)
    drop = max(1, int(round(ignore_fraction * h * w)))
    threshold = blurred.topk(drop, dim=1).values[:, -1:]  # the smallest value still dropped
    keep = (blurred < threshold).to(error.dtype)
    return keep.reshape(n, 1, h, w)


@dataclass
class Adapted:
    images: torch.Tensor  # [N, C, H, W]: each image drawn by its own adapted weights
    loss: torch.Tensor  # [N]: the full (unmasked) image distance after adaptation


class Adapter:
    """Adapts a working copy of ``G.synthesis``; the original network is never changed."""

    def __init__(self, G: Any, opts: AdaptationOptions, loss_fn: ImageLoss) -> None:
        self.opts, self.loss_fn = opts, loss_fn
        self.original = [p.detach() for p in G.synthesis.parameters()]
        self.work = copy.deepcopy(G.synthesis) if opts.steps > 0 else None
        if self.work is not None:
            self.work.requires_grad_(True)
            self.params = [p for p in self.work.parameters()]

    def _reset(self) -> None:
        with torch.no_grad():
            for p, p0 in zip(self.params, self.original, strict=True):
                p.copy_(p0)

    def _draw(self, ws: torch.Tensor) -> torch.Tensor:
        assert self.work is not None
        return self.work(ws, noise_mode="const")

    def adapt(
        self,
        ws: torch.Tensor,  # [N, num_ws, w_dim] projected latents
        targets: torch.Tensor,  # [N, C, H, W] in [-1, 1]
        keep: torch.Tensor,  # [N, 1, H, W] loss weights
        projected: torch.Tensor,  # [N, C, H, W] the projection's images (returned as is without steps)
        projected_loss: torch.Tensor,  # [N]
        should_stop: Callable[[], bool] | None = None,
    ) -> Adapted:
        if self.work is None:
            return Adapted(images=projected, loss=projected_loss)
        images, losses = [], []
        for i in range(ws.shape[0]):
            if should_stop is not None and should_stop():
                raise StopRequested("severity index: stopped during adaptation")
            out, loss = self._one(ws[i : i + 1], targets[i : i + 1], keep[i : i + 1], should_stop)
            images.append(out)
            losses.append(loss)
        return Adapted(images=torch.cat(images), loss=torch.cat(losses))

    def _one(
        self, ws: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, should_stop: Callable[[], bool] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._reset()
        opt = torch.optim.Adam(self.params, lr=self.opts.lr, betas=(0.9, 0.999))
        feats = self.loss_fn.target_features(target)
        for step in range(self.opts.steps):
            if should_stop is not None and step % STOP_CHECK_EVERY == STOP_CHECK_EVERY - 1 and should_stop():
                raise StopRequested("severity index: stopped during adaptation")
            loss = self.loss_fn(self._draw(ws), target, feats, keep).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if self.opts.pull > 0:
                with torch.no_grad():
                    for p, p0 in zip(self.params, self.original, strict=True):
                        p.lerp_(p0, self.opts.pull)
        with torch.no_grad():
            out = self._draw(ws)
            return out, self.loss_fn(out, target, feats)

    def max_drift(self) -> float:
        """The largest distance of any working weight from its original (after the last image)."""
        if self.work is None:
            return 0.0
        with torch.no_grad():
            return max(float((p - p0).abs().max()) for p, p0 in zip(self.params, self.original, strict=True))

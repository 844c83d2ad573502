"""GAN inversion into W+: a batch of images, each its own latents, found together.

Every image gets one w per synthesis layer (``[num_ws, w_dim]``), all starting at the mean w,
optimised by Adam on the image distance (``losses.ImageLoss``). The generator's weights are
fixed, and Adam works per element, so an image's latents follow the same path whatever else is
in its batch (up to floating-point rounding of batched arithmetic). The schedule is the
StyleGAN2-ADA projector's: the learning rate rises over the first ``rampup`` of the steps and
falls along half a cosine over the last ``rampdown``; Gaussian noise of ``noise`` x (spread of
w) is added to the latents, falling quadratically to 0 at ``noise_ramp`` of the steps. The
noise is drawn per image from its own seed (so it depends on the image, not on its batch), one
vector per step shared by the layers. StyleGAN2's per-pixel noise inputs stay fixed (their
stored values): left free, they could paint in the very anomaly the index looks for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cleftgan_hpc.context import StopRequested
from cleftgan_hpc.jobspec.kinds.severity import ProjectionOptions
from cleftgan_hpc.seeds import seeded_generator
from cleftgan_hpc.severity.losses import ImageLoss

STOP_CHECK_EVERY = 10  # steps between looks at the stop flag


@dataclass(frozen=True)
class WStats:
    """The mean w (the projection's start) and its spread (RMS distance from the mean)."""

    mean: torch.Tensor  # [w_dim]
    std: float


@torch.no_grad()
def w_stats(G: Any, samples: int, seed: int, device: torch.device | str) -> WStats:
    """Map ``samples`` latents z (drawn from ``seed``) and measure w's mean and spread, as the
    reference projector does (a network's tracked w_avg can be absent or stale)."""
    g = seeded_generator("severity-index", "w-stats", seed)
    z = torch.randn(samples, G.z_dim, generator=g)
    parts = [G.mapping(chunk.to(device), None)[:, 0].to(torch.float64) for chunk in z.split(1024)]
    w = torch.cat(parts)
    mean = w.mean(dim=0)
    std = float(((w - mean).square().sum(dim=1).mean()).sqrt())
    return WStats(mean=mean.to(torch.float32), std=std)


def learning_rate(step: int, steps: int, opts: ProjectionOptions) -> float:
    """The schedule's learning rate at ``step`` of ``steps``."""
    t = step / steps
    ramp = min(1.0, (1.0 - t) / opts.rampdown) if opts.rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if opts.rampup > 0:
        ramp *= min(1.0, t / opts.rampup)
    return opts.lr * ramp


def noise_scale(step: int, steps: int, opts: ProjectionOptions, w_std: float) -> float:
    t = step / steps
    return w_std * opts.noise * max(0.0, 1.0 - t / opts.noise_ramp) ** 2


def pixel_weight(opts: ProjectionOptions, loss_has_lpips: bool) -> float:
    """The projection's pixel-loss weight: as set, or 0 with an LPIPS network and 1 without."""
    if opts.pixel_weight is not None:
        return opts.pixel_weight
    return 0.0 if loss_has_lpips else 1.0


@dataclass
class Projection:
    ws: torch.Tensor  # [N, num_ws, w_dim], detached
    images: torch.Tensor  # [N, C, H, W] generated at ws, in about [-1, 1]
    loss: torch.Tensor  # [N] the image distance at ws (no noise, no regulariser)


def synthesize(G: Any, ws: torch.Tensor) -> torch.Tensor:
    """The synthesis network at ``ws``: StyleGAN2's stored noise, the network's own precision."""
    return G.synthesis(ws, noise_mode="const")


def project(
    G: Any,
    targets: torch.Tensor,  # float [N, C, H, W] in [-1, 1], on the generator's device
    noise_seeds: Sequence[int],  # one per image
    stats: WStats,
    loss_fn: ImageLoss,
    opts: ProjectionOptions,
    should_stop: Callable[[], bool] | None = None,
) -> Projection:
    """Latents in W+ that make ``G`` draw each target; raises StopRequested when asked to stop."""
    n, device = targets.shape[0], targets.device
    steps = opts.steps
    noise = torch.stack([
        torch.randn(steps, stats.mean.shape[0], generator=seeded_generator("severity-index", "project", s))
        for s in noise_seeds
    ]).to(device)  # [N, steps, w_dim]
    ws = stats.mean.to(device)[None, None].repeat(n, G.num_ws, 1).requires_grad_(True)
    opt = torch.optim.Adam([ws], betas=(0.9, 0.999), lr=opts.lr)
    feats = loss_fn.target_features(targets)
    for step in range(steps):
        if should_stop is not None and step % STOP_CHECK_EVERY == 0 and should_stop():
            raise StopRequested("severity index: stopped during projection")
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, opts)
        scale = noise_scale(step, steps, opts, stats.std)
        noisy = ws + (noise[:, step, None, :] * scale) if scale > 0 else ws
        per_image = loss_fn(synthesize(G, noisy), targets, feats)
        if opts.w_plus_reg > 0:
            spread = (ws - ws.mean(dim=1, keepdim=True)).square().sum(dim=2).mean(dim=1)
            per_image = per_image + opts.w_plus_reg * spread / stats.std**2
        opt.zero_grad(set_to_none=True)
        per_image.sum().backward()  # images are independent: each gets its own gradient
        opt.step()
    with torch.no_grad():
        final = ws.detach()
        images = synthesize(G, final)
        loss = loss_fn(images, targets, feats)
    return Projection(ws=final, images=images, loss=loss)

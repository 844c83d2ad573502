"""The StyleGAN3 objective: non-saturating logistic loss with lazy R1 (Karras et al. 2019/2021).

Three phases per batch, as the reference schedules them:
- G main:  softplus(-D(aug(G(z))))                          every batch
- D main:  softplus(D(aug(G(z)))) + softplus(-D(aug(x)))    every batch
- D reg:   gamma/2 * |grad_x D(aug(x))|^2, times the interval  every r1_interval batches
The R configuration blurs D's input with a Gaussian whose sigma fades to 0 early in training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (the reference's base-2 kernel: 2^-(x/sigma)^2), zero padded as the reference."""
    size = int(sigma * 3)
    if size <= 0:
        return img
    x = torch.arange(-size, size + 1, device=img.device, dtype=img.dtype)
    f = (x / sigma).square().neg().exp2()
    f = f / f.sum()
    c = img.shape[1]
    pad = F.pad(img, [size, size, size, size])
    out = F.conv2d(pad, f.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, f.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@dataclass
class Loss:
    """Runs G and D the way every phase needs them."""

    G: torch.nn.Module
    D: torch.nn.Module
    augment: Augment | None  # None or p == 0: images go to D untouched
    r1_gamma: float
    blur_sigma: float = 0.0  # current D-input blur (R config), set by the loop

    def run_G(self, z: torch.Tensor, c: torch.Tensor | None, update_emas: bool) -> torch.Tensor:
        ws = self.G.mapping(z, c, update_emas=update_emas)
        return self.G.synthesis(ws, update_emas=update_emas)

    def run_D(self, img: torch.Tensor, c: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        if self.blur_sigma > 0:
            img = blur(img, self.blur_sigma)
        if self.augment is not None:
            img = self.augment(img, gen)
        return self.D(img, c)

    def g_main(self, z: torch.Tensor, c: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        logits = self.run_D(self.run_G(z, c, update_emas=False), c, gen)
        loss = F.softplus(-logits).mean()
        return loss, {"loss_G": loss.detach(), "scores_fake": logits.detach().mean()}

    def d_main(
        self,
        real: torch.Tensor,
        real_c: torch.Tensor | None,
        z: torch.Tensor,
        c: torch.Tensor | None,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            fake = self.run_G(z, c, update_emas=True)  # the reference updates w_avg/magnitude EMAs here
        logits_fake = self.run_D(fake, c, gen)
        logits_real = self.run_D(real, real_c, gen)
        loss = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        return loss, {
            "loss_D": loss.detach(),
            "scores_real": logits_real.detach().mean(),
            "signs_real": logits_real.detach().sign().sum(),  # ADA's overfitting heuristic r_t
            "n_real": torch.tensor(float(logits_real.shape[0])),
        }

    def d_reg(
        self, real: torch.Tensor, real_c: torch.Tensor | None, gen: torch.Generator, interval: int
    ) -> tuple[torch.Tensor, dict]:
        x = real.detach().requires_grad_(True)
        logits = self.run_D(x, real_c, gen)
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = grad.square().sum(dim=[1, 2, 3])  # [N]
        loss = (penalty * (self.r1_gamma / 2)).mean() * interval
        return loss, {"r1_penalty": penalty.detach().mean()}

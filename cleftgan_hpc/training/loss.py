"""The StyleGAN2/3 objective: non-saturating logistic loss with lazy R1 (Karras et al. 2019/2021),
and for StyleGAN2 style mixing and lazy path-length regularisation (Karras et al. 2020).

The phases of a batch, as the reference schedules them:
- G main:  softplus(-D(aug(G(z))))                          every batch
- G reg:   w * (|J_w^T y| - a)^2, times the interval         every pl_interval batches (StyleGAN2)
- D main:  softplus(D(aug(G(z)))) + softplus(-D(aug(x)))    every batch
- D reg:   gamma/2 * |grad_x D(aug(x))|^2, times the interval  every r1_interval batches
The R configuration blurs D's input with a Gaussian whose sigma fades to 0 early in training.
Every G run of StyleGAN2 mixes styles (with probability style_mixing_prob: ws from a second z
from a random layer on) and draws its per-pixel noise; both from the generator it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cleftgan_hpc.model.stylegan2 import StyleGAN2Synthesis

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
    style_mixing_prob: float = 0.0
    pl_weight: float = 0.0
    pl_decay: float = 0.01

    def run_G_ws(
        self, z: torch.Tensor, c: torch.Tensor | None, update_emas: bool, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, ws). ``gen`` draws the style mixing and StyleGAN2's noise (needed when they happen)."""
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.style_mixing_prob > 0:
            assert gen is not None, "style mixing draws from the run's generator"
            num_ws = ws.shape[1]
            cutoff = int(torch.randint(1, num_ws, [], generator=gen)) if num_ws > 1 else num_ws
            if float(torch.rand([], generator=gen)) >= self.style_mixing_prob:
                cutoff = num_ws
            z2 = torch.randn(z.shape, generator=gen).to(z.device)  # drawn always: the stream does not fork
            if cutoff < num_ws:
                ws2 = self.G.mapping(z2, c, update_emas=False)
                ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        if isinstance(self.G.synthesis, StyleGAN2Synthesis):
            img = self.G.synthesis(ws, update_emas=update_emas, noise_mode="random", noise_generator=gen)
        else:
            img = self.G.synthesis(ws, update_emas=update_emas)
        return img, ws

    def run_G(
        self, z: torch.Tensor, c: torch.Tensor | None, update_emas: bool, gen: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.run_G_ws(z, c, update_emas, gen)[0]

    def run_D(self, img: torch.Tensor, c: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        if self.blur_sigma > 0:
            img = blur(img, self.blur_sigma)
        if self.augment is not None:
            img = self.augment(img, gen)
        return self.D(img, c)

    def g_main(
        self, z: torch.Tensor, c: torch.Tensor | None, gen: torch.Generator, g_gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        logits = self.run_D(self.run_G(z, c, update_emas=False, gen=g_gen), c, gen)
        loss = F.softplus(-logits).mean()
        return loss, {"loss_G": loss.detach(), "scores_fake": logits.detach().mean()}

    def d_main(
        self,
        real: torch.Tensor,
        real_c: torch.Tensor | None,
        z: torch.Tensor,
        c: torch.Tensor | None,
        gen: torch.Generator,
        g_gen: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            fake = self.run_G(z, c, update_emas=True, gen=g_gen)  # the reference updates w_avg/magnitude EMAs here
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

    def g_pl(
        self, z: torch.Tensor, c: torch.Tensor | None, gen: torch.Generator, pl_mean: torch.Tensor, interval: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Path-length penalty of these samples: (loss, pl_mean moved toward their mean length, stats).
        The moved pl_mean carries gradient into the penalty, as the reference's."""
        img, ws = self.run_G_ws(z, c, update_emas=False, gen=gen)
        noise = torch.randn(img.shape, generator=gen).to(img.device) / math.sqrt(img.shape[2] * img.shape[3])
        # autograd.grad w.r.t. ws alone: the engine computes no weight gradients here (pl_no_weight_grad)
        (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grads.square().sum(2).mean(1).sqrt()  # [N]
        moved = pl_mean.to(lengths.device).lerp(lengths.mean(), self.pl_decay)
        penalty = (lengths - moved).square()
        loss = (penalty * self.pl_weight).mean() * interval
        return loss, moved.detach(), {"pl_penalty": penalty.detach().mean(), "pl_length": lengths.detach().mean()}

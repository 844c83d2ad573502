"""One training step of a fine-tune, and the state that resumes it.

``Trainer`` holds the networks, optimisers, augmentation and counters of a run and takes one
step of the global batch; ``loop.train`` runs it to the end. It reads only the ``Recipe``.

Exactness: every random draw (StyleGAN2's style mixing and per-pixel noise included) comes
from a generator seeded by (seed, step, purpose[, slice]), real images are drawn from an epoch
permutation seeded by (seed, epoch), and the checkpoint holds every optimiser and network
state and pl_mean, so a run stopped at any step and resumed ends with the same weights as one
that never stopped. The global batch is drawn once and sliced per process, so N processes see
the same samples as one process accumulating N rounds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.model.stylegan2 import StyleGAN2Synthesis
from cleftgan_hpc.seeds import derive_seed
from cleftgan_hpc.seeds import seeded_generator as generator
from cleftgan_hpc.training import distributed
from cleftgan_hpc.training.ada import AdaConfig, AdaController
from cleftgan_hpc.training.loss import Loss
from cleftgan_hpc.training.recipe import AdamSettings, Recipe
from cleftgan_hpc.training.state import TrainProgress, progress_from_dict, progress_to_dict


class TrainingDiverged(CleftGanError):
    """A loss became NaN or Inf; the last good checkpoint is intact."""


@dataclass
class Networks:
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module


@dataclass
class TrainData:
    """The training set in memory as uint8, with x-flip mirroring and labels."""

    images: torch.Tensor  # [N, C, H, W] uint8
    labels: torch.Tensor | None  # [N, c_dim] float32, or None
    mirror: bool

    def __len__(self) -> int:
        return self.images.shape[0] * (2 if self.mirror else 1)

    def indices(self, seed: int, start: int, count: int) -> np.ndarray:
        """Dataset indices of global samples start..start+count: one seeded permutation per epoch."""
        n = len(self)
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            epoch, pos = divmod(start + i, n)
            if pos == 0 or i == 0:
                perm = np.random.RandomState(derive_seed("epoch", seed, epoch) % 2**32).permutation(n)
            out[i] = perm[pos]
        return out

    def batch(self, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.images.shape[0]
        flip = torch.from_numpy(idx >= n)
        base = torch.from_numpy(idx % n)
        img = self.images[base].to(device=device, dtype=torch.float32) / 127.5 - 1  # [B, C, H, W] in [-1, 1]
        if flip.any():
            img[flip.to(device)] = img[flip.to(device)].flip(-1)
        c = self.labels[base].to(device) if self.labels is not None else None
        return img, c


def adam(params: list[torch.nn.Parameter], settings: AdamSettings) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=settings.lr, betas=(settings.beta1, settings.beta2), eps=settings.eps)


def freeze_discriminator(D: torch.nn.Module, n: int) -> None:
    """Freeze-D: the first n layers (fromrgb, conv0, conv1, skip of each block, highest resolution first)."""
    idx = 0
    for res in sorted((int(k[1:]) for k, _ in D.named_children() if k[0] == "b" and k[1:].isdigit()), reverse=True):
        block = getattr(D, f"b{res}")
        for name in ("fromrgb", "conv0", "conv1", "skip"):
            layer = getattr(block, name, None)
            if layer is not None:
                layer.requires_grad_(idx >= n)
                idx += 1


@torch.no_grad()
def update_ema(G: torch.nn.Module, G_ema: torch.nn.Module, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


@dataclass
class Trainer:
    """One training run: networks, optimisers, augmentation and counters."""

    recipe: Recipe
    nets: Networks
    data: TrainData
    augment: Callable | None  # (images, generator) -> images, with a settable .p
    device: torch.device
    dist_env: distributed.DistEnv
    log: Callable[[str], None]

    def __post_init__(self) -> None:
        r = self.recipe
        if r.world_size != self.dist_env.world_size:
            raise CleftGanError(f"the recipe is for {r.world_size} processes, but {self.dist_env.world_size} run")
        freeze_discriminator(self.nets.D, r.freeze_d)
        self.g_params = [p for p in self.nets.G.parameters() if p.requires_grad]
        self.d_params = [p for p in self.nets.D.parameters() if p.requires_grad]
        self.opt_G = adam(self.g_params, r.g_adam)
        self.opt_D = adam(self.d_params, r.d_adam)
        self.loss = Loss(self.nets.G, self.nets.D, self.augment, r.r1_gamma, style_mixing_prob=r.style_mixing_prob,
                         pl_weight=r.pl_weight, pl_decay=r.pl_decay)
        self.progress = TrainProgress(ada_p=r.augment_p or 0.0)
        # G draws its own randomness (style mixing, StyleGAN2's per-pixel noise) from seeded generators
        self.g_draws = r.style_mixing_prob > 0 or isinstance(self.nets.G.synthesis, StyleGAN2Synthesis)
        self.ada = (  # p from D's over-confidence on reals, unless p is fixed or nothing augments
            AdaController(AdaConfig(r.ada_target, r.ada_interval, r.ada_kimg), r.batch)
            if r.augment_p is None and self.augment is not None else None
        )

    # -- resume --------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "G": self.nets.G.state_dict(),
            "D": self.nets.D.state_dict(),
            "G_ema": self.nets.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "progress": progress_to_dict(self.progress),
        }

    def load_state(self, state: dict) -> None:
        self.nets.G.load_state_dict(state["G"])
        self.nets.D.load_state_dict(state["D"])
        self.nets.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        # The recipe's learning rates win over the saved ones (a PBT clone may have new ones).
        for opt, settings in ((self.opt_G, self.recipe.g_adam), (self.opt_D, self.recipe.d_adam)):
            for group in opt.param_groups:
                group["lr"] = settings.lr
        self.progress = progress_from_dict(state["progress"])
        if self.recipe.augment_p is not None:  # a fixed p in the recipe wins (a sweep may have changed it)
            self.progress.ada_p = self.recipe.augment_p
        elif self.ada is not None:
            if self.progress.ada_state:
                self.ada.load_state_dict(self.progress.ada_state)
            else:
                self.ada.p = self.progress.ada_p

    # -- one batch -------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        r, prog, dev = self.recipe, self.progress, self.device
        G = self.nets.G
        step, rank = prog.step, self.dist_env.rank
        if self.augment is not None:
            self.augment.p = prog.ada_p
        self.loss.augment = self.augment if prog.ada_p > 0 else None  # p = 0: D sees the images untouched
        self.loss.blur_sigma = r.blur_sigma(prog.cur_nimg)

        # The global batch, drawn once: every process takes its slice.
        g = generator("batch", r.seed, step)
        z_all = torch.randn([2, r.batch, G.z_dim], generator=g)  # [phase, B, z_dim]: G phase, D phase
        gen_c_idx = torch.randint(0, max(len(self.data), 1), [2, r.batch], generator=g).numpy()
        real_idx = self.data.indices(r.seed, prog.cur_nimg, r.batch)
        lo = rank * r.batch_per_process
        stats: dict[str, torch.Tensor] = {}

        def add(d: dict[str, torch.Tensor]) -> None:
            for k, v in d.items():
                stats[k] = stats.get(k, 0) + v.float().cpu() / r.rounds

        def gen_c(phase: int, sl: slice) -> torch.Tensor | None:
            if self.data.labels is None:
                return None
            return self.data.labels[gen_c_idx[phase][sl] % self.data.images.shape[0]].to(dev)

        def aug_gen(phase: str, rnd: int) -> torch.Generator:
            # keyed by the slice's place in the global batch: the same samples get the same draws
            # whether they are one process's round r or another process's whole share
            return generator("augment", r.seed, step, phase, lo + rnd * r.batch_per_round)

        def g_gen(phase: str, rnd: int) -> torch.Generator | None:
            # G's own draws (style mixing, StyleGAN2's noise), keyed the same way; StyleGAN3 draws none
            if not self.g_draws:
                return None
            return generator("G", r.seed, step, phase, lo + rnd * r.batch_per_round)

        # G main.
        for p in self.d_params:
            p.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        for rnd in range(r.rounds):
            sl = slice(lo + rnd * r.batch_per_round, lo + (rnd + 1) * r.batch_per_round)
            loss, s = self.loss.g_main(z_all[0, sl].to(dev), gen_c(0, sl), aug_gen("G", rnd), g_gen("G", rnd))
            self._check(loss, "G")
            (loss / r.rounds).backward()
            add(s)
        for p in self.d_params:
            p.requires_grad_(True)
        self._opt_step(self.opt_G, self.g_params)

        # G reg: path length every pl_interval batches, on the first pl_batch_per_round samples of
        # each round (a separate optimiser step, as the reference). Every round moves pl_mean from
        # the same value and the results are averaged, as the EMAs below.
        if r.pl_due(step):
            gp = generator("pl", r.seed, step)  # its own global draw: the G and D phases' draws stay as they are
            pl_z = torch.randn([r.batch, G.z_dim], generator=gp)
            pl_c_idx = torch.randint(0, max(len(self.data), 1), [r.batch], generator=gp).numpy()
            pl_mean = torch.tensor(prog.pl_mean, dtype=torch.float32)
            pl_sum = torch.zeros([], dtype=torch.float32)
            self.opt_G.zero_grad(set_to_none=True)
            for rnd in range(r.rounds):
                start = lo + rnd * r.batch_per_round
                sl = slice(start, start + r.pl_batch_per_round)
                c = None if self.data.labels is None else (
                    self.data.labels[pl_c_idx[sl] % self.data.images.shape[0]].to(dev))
                loss, moved, s = self.loss.g_pl(
                    pl_z[sl].to(dev), c, generator("G", r.seed, step, "pl", start), pl_mean, r.pl_interval
                )
                self._check(loss, "path length")
                (loss / r.rounds).backward()
                add(s)
                pl_sum += moved.float().cpu()
            self._opt_step(self.opt_G, self.g_params)
            world = self.dist_env.world_size
            prog.pl_mean = float(distributed.all_sum(pl_sum, world) / (r.rounds * world))

        # D main, and R1 every r1_interval batches (a separate optimiser step, as the reference).
        # G's running averages (w_avg, magnitude_ema) update here; every round starts from the
        # same values and the results are averaged over rounds and processes, so the outcome
        # does not depend on how the batch is split.
        emas = [b for name, b in G.named_buffers() if name.endswith(("w_avg", "magnitude_ema"))]
        before = [b.clone() for b in emas]
        summed = [torch.zeros_like(b) for b in emas]
        self.opt_D.zero_grad(set_to_none=True)
        for rnd in range(r.rounds):
            sl = slice(lo + rnd * r.batch_per_round, lo + (rnd + 1) * r.batch_per_round)
            for b, b0 in zip(emas, before, strict=True):
                b.copy_(b0)
            real, real_c = self.data.batch(real_idx[sl], dev)
            loss, s = self.loss.d_main(real, real_c, z_all[1, sl].to(dev), gen_c(1, sl), aug_gen("D", rnd),
                                       g_gen("D", rnd))
            self._check(loss, "D")
            (loss / r.rounds).backward()
            add(s)
            for acc, b in zip(summed, emas, strict=True):
                acc += b
        for b, acc in zip(emas, summed, strict=True):
            b.copy_(distributed.all_sum(acc, self.dist_env.world_size) / (r.rounds * self.dist_env.world_size))
        self._opt_step(self.opt_D, self.d_params)
        if step % r.r1_interval == 0 and r.r1_gamma > 0:
            self.opt_D.zero_grad(set_to_none=True)
            for rnd in range(r.rounds):
                sl = slice(lo + rnd * r.batch_per_round, lo + (rnd + 1) * r.batch_per_round)
                real, real_c = self.data.batch(real_idx[sl], dev)
                loss, s = self.loss.d_reg(real, real_c, aug_gen("R1", rnd), r.r1_interval)
                self._check(loss, "R1")
                (loss / r.rounds).backward()
                add(s)
            self._opt_step(self.opt_D, self.d_params)

        # G_ema, ADA, counters.
        update_ema(G, self.nets.G_ema, r.ema_beta(prog.cur_nimg))
        if self.ada is not None:
            self.ada.accumulate_signs(stats["signs_real"] * r.rounds, stats["n_real"] * r.rounds)
            n = self.dist_env.world_size
            if self.ada.end_batch(reduce=lambda t: distributed.all_sum(t, n)):
                prog.ada_p = self.ada.p
            prog.ada_state = self.ada.state_dict()
        prog.step += 1
        prog.cur_nimg += r.batch
        out = {k: float(v) for k, v in stats.items() if k not in ("signs_real", "n_real")}
        out["augment_p"] = prog.ada_p
        return out

    def _check(self, loss: torch.Tensor, what: str) -> None:
        # Every rank learns of a non-finite loss anywhere, so all stop together (none waits in a collective).
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss)) else 1.0])
        if distributed.all_sum(bad, self.dist_env.world_size).item() > 0:
            value = loss.item() if not torch.isfinite(loss) else "non-finite on another rank"
            raise TrainingDiverged(
                f"the {what} loss became {value} at step {self.progress.step} "
                f"(kimg {self.progress.cur_nimg / 1000:.1f}); lower the learning rates or raise gamma. "
                "The last good checkpoint is intact."
            )

    def _opt_step(self, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
        distributed.average_gradients([p for p in params], self.dist_env.world_size)
        opt.step()


def copy_networks(G: torch.nn.Module, D: torch.nn.Module, G_ema: torch.nn.Module | None) -> Networks:
    """Training copies: G and D train; G_ema starts from the loaded G_ema (or G)."""
    G_ema = copy.deepcopy(G_ema if G_ema is not None else G).eval().requires_grad_(False)
    return Networks(G.train().requires_grad_(True), D.train().requires_grad_(True), G_ema)


__all__ = ["Networks", "TrainData", "Trainer", "TrainingDiverged", "copy_networks"]

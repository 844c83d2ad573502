"""The fine-tune recipe: every value training uses, worked out once before it starts.

The finetune stage builds a ``Recipe`` from its config and the processes it runs on (as the
reference's ``train.py`` works out its options before it calls the training loop), logs it,
stores it in every checkpoint, and hands it to training, which reads nothing else: no field
of the YAML schema reaches the loop, and a derived value (the D learning rate under lazy R1,
the EMA half-life, the blur fade) has exactly one definition, here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

R1_INTERVAL = 16  # lazy R1 every 16 D steps (StyleGAN3 has no G regulariser: G's Adam is unscaled)

# The reference's StyleGAN2 recipe (its train.py, cfg stylegan2): style mixing, and lazy
# path-length regularisation of G every 4 G steps on half the batch.
STYLEGAN2_MIXING_PROB = 0.9
PL_INTERVAL = 4
PL_WEIGHT = 2.0
PL_BATCH_SHRINK = 2
PL_DECAY = 0.01
PL_NO_WEIGHT_GRAD = True


@dataclass(frozen=True)
class AdamSettings:
    """One Adam optimiser: the reference's betas (0, 0.99) and eps, scaled for lazy regularisation."""

    lr: float
    beta1: float
    beta2: float
    eps: float = 1e-8

    @classmethod
    def for_interval(cls, lr: float, reg_interval: int | None) -> AdamSettings:
        """Adam for a network regularised every ``reg_interval`` steps: with the regulariser's
        own steps in between, lr and beta2 shrink so that one interval moves as far as the
        same number of steps without it would (Karras et al. 2020, lazy regularisation)."""
        ratio = reg_interval / (reg_interval + 1) if reg_interval else 1.0
        return cls(lr=lr * ratio, beta1=0.0, beta2=0.99**ratio)


@dataclass(frozen=True)
class Recipe:
    """Everything a fine-tune run trains with. Sizes are in images (nimg) unless named kimg."""

    # -- the batch and how it is split -------------------------------------------------------
    batch: int  # global batch: every process draws it whole and takes its slice
    world_size: int  # data-parallel processes
    batch_per_process: int  # batch // world_size
    batch_per_round: int  # samples per forward/backward; a process accumulates `rounds` of them
    rounds: int

    # -- length and snapshots ------------------------------------------------------------------
    seed: int  # of everything random; every draw is keyed by it, the step and its purpose
    kimg: float  # the configured length
    total_steps: int  # ceil(kimg * 1000 / batch)
    total_nimg: int  # total_steps * batch: what the last step reaches
    snapshot_nimg: float  # checkpoint, grid and metrics every this many images
    tick_nimg: int  # a line of stats.jsonl every this many images: ~100 a run, at most 4 kimg apart
    keep_checkpoints: int
    metrics: tuple[str, ...]  # at each snapshot; the first picks the best checkpoint
    metric_samples: int
    grid_seeds: int

    # -- optimisers and loss -------------------------------------------------------------------
    g_adam: AdamSettings  # scaled for lazy path-length regularisation (stylegan2), else unscaled
    d_adam: AdamSettings  # scaled for lazy R1
    r1_gamma: float
    r1_interval: int
    freeze_d: int  # the first N discriminator layers do not train (Freeze-D)
    style_mixing_prob: float  # of each G run's (slice's) ws, a random tail from a second z (stylegan2: 0.9)
    pl_interval: int | None  # path-length regularisation of G every this many steps (stylegan2: 4); None: never
    pl_weight: float
    pl_batch_shrink: int
    pl_batch_per_round: int  # max(batch_per_round // pl_batch_shrink, 1): the first samples of each round
    pl_decay: float  # of the pl_mean EMA (in the checkpoint's progress)
    pl_no_weight_grad: bool  # the path-length gradient (w.r.t. ws) computes no weight gradients

    # -- G_ema ---------------------------------------------------------------------------------
    ema_nimg: float  # half-life of G_ema's weights
    ema_rampup: float | None  # early on the half-life is at most cur_nimg * rampup

    # -- augmentation (ADA) ----------------------------------------------------------------------
    augment: str | tuple[tuple[str, float], ...] | None  # a preset, (op, weight) pairs, or None: never
    augment_p: float | None  # a fixed probability; None: ADA adjusts it
    ada_target: float
    ada_interval: int
    ada_kimg: float

    # -- the R configuration's D-input blur ------------------------------------------------------
    blur_init_sigma: float  # 10 for StyleGAN3-R, 0 otherwise
    blur_fade_nimg: float  # fades linearly to 0 over this many images

    # -- the data --------------------------------------------------------------------------------
    mirror: bool
    conditional: bool

    # -- networks and precision --------------------------------------------------------------------
    architecture: str  # stylegan3-t, stylegan3-r or stylegan2 (of a random network; a loaded one keeps its own)
    num_fp16_res: int  # reduced precision in the layers of the highest this-many resolutions (0: none)
    low_precision_dtype: str  # float16 or bfloat16
    magnitude_ema_beta: float  # the synthesis layers' input-magnitude EMA, per batch

    # -- what a checkpoint must agree with -----------------------------------------------------
    resume_digest: str  # everything but the settings a run may change and continue with
    finished_digest: str  # everything but the length: a finished run is exported again only under it

    def ema_beta(self, cur_nimg: int) -> float:
        """G_ema's decay for the step at ``cur_nimg`` images."""
        ema_nimg = self.ema_nimg
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * self.ema_rampup)
        return 0.5 ** (self.batch / max(ema_nimg, 1e-8))

    def blur_sigma(self, cur_nimg: int) -> float:
        """The D-input blur at ``cur_nimg`` images (R configuration)."""
        if self.blur_fade_nimg <= 0:
            return 0.0
        return max(1 - cur_nimg / self.blur_fade_nimg, 0) * self.blur_init_sigma

    def pl_due(self, step: int) -> bool:
        """Whether the step numbered ``step`` (from 0) runs the path-length phase."""
        return self.pl_interval is not None and self.pl_weight > 0 and step % self.pl_interval == 0

    def snapshot_due(self, prev_nimg: int, cur_nimg: int) -> bool:
        """Whether a step from ``prev_nimg`` to ``cur_nimg`` images crossed a snapshot boundary."""
        return math.floor(cur_nimg / self.snapshot_nimg) > math.floor(prev_nimg / self.snapshot_nimg)

    def tick_due(self, prev_nimg: int, cur_nimg: int) -> bool:
        return cur_nimg // self.tick_nimg > prev_nimg // self.tick_nimg

    def as_dict(self) -> dict:
        """Plain JSON-able values (for the log and the checkpoint)."""
        return asdict(self)

    def describe(self) -> list[str]:
        """The recipe as log lines, one group a line, as the reference prints its options."""
        a = self.as_dict()
        groups = {
            "batch": ("batch", "world_size", "batch_per_process", "batch_per_round", "rounds"),
            "length": ("kimg", "total_steps", "total_nimg", "snapshot_nimg", "tick_nimg", "keep_checkpoints"),
            "snapshots": ("metrics", "metric_samples", "grid_seeds", "seed"),
            "loss": ("g_adam", "d_adam", "r1_gamma", "r1_interval", "freeze_d"),
            "G reg": ("style_mixing_prob", "pl_interval", "pl_weight", "pl_batch_shrink",
                      "pl_batch_per_round", "pl_decay",
                      "pl_no_weight_grad"),
            "G_ema": ("ema_nimg", "ema_rampup"),
            "augment": ("augment", "augment_p", "ada_target", "ada_interval", "ada_kimg"),
            "blur": ("blur_init_sigma", "blur_fade_nimg"),
            "data": ("mirror", "conditional"),
            "networks": ("architecture", "num_fp16_res", "low_precision_dtype", "magnitude_ema_beta"),
        }
        return [f"recipe {name}: " + ", ".join(f"{k}={a[k]}" for k in keys) for name, keys in groups.items()]


def schedule(kimg: float, batch: int) -> tuple[int, int, int]:
    """(total_steps, total_nimg, tick_nimg) of a run of ``kimg`` at ``batch``."""
    steps = math.ceil(kimg * 1000 / batch)
    total = steps * batch
    return steps, total, max(batch, int(min(4000, total / 100)))

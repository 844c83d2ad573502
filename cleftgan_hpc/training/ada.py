"""The ADA controller: tune the augmentation probability p from D's over-confidence on reals.

The overfitting heuristic of Karras et al. (2020): r_t = E[sign(D(real))], averaged over the
real logits of the last ``interval`` batches (over all ranks). When r_t exceeds the target, D
is over-confident on reals (overfitting) and p goes up; otherwise it goes down:

    p <- max(p + sign(r_t - target) * batch * interval / (ada_kimg * 1000), 0)

so p can move from 0 to 1 in ``ada_kimg`` thousand images. ``batch`` is the global batch.
The accumulators live on the controller's ``device`` (give it the training device) and are
read only at an update, so the loop does not synchronise with the GPU every batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cleftgan_hpc.errors import CleftGanError


@dataclass(frozen=True)
class AdaConfig:
    """ADA's knobs; the defaults are the paper's."""

    target: float = 0.6  # wanted E[sign(D(real))]
    interval: int = 4  # batches between p updates
    kimg: float = 500.0  # thousands of images for p to move by 1 (100 is usual on resume)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and -1 <= self.target <= 1):
            raise CleftGanError(f"ada_target must be in [-1, 1], got {self.target!r}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise CleftGanError(f"ada_interval must be an integer >= 1, got {self.interval!r}")
        if not (math.isfinite(self.kimg) and self.kimg > 0):
            raise CleftGanError(f"ada_kimg must be a number > 0, got {self.kimg!r}")


class AdaController:
    """Accumulates sign(D(real)) and adjusts ``p`` every ``interval`` batches.

    Per batch: ``accumulate(real_logits)`` (one or more times), then ``end_batch()``. A
    data-parallel loop passes ``reduce`` (a sum over ranks of a small tensor) to
    ``end_batch`` so that every rank computes the same r_t and the same p.
    """

    def __init__(
        self, config: AdaConfig, batch_size: int, p: float = 0.0, device: str | torch.device = "cpu"
    ) -> None:
        if batch_size < 1:
            raise CleftGanError(f"ADA needs the global batch size >= 1, got {batch_size}")
        self.config = config
        self.batch_size = batch_size
        self.p = float(p)
        self.rt: float | None = None  # r_t at the last update (for the stats log)
        self.device = torch.device(device)
        self._acc = torch.zeros(2, dtype=torch.float64, device=self.device)  # [sum of signs, number of logits]
        self._batches = 0  # batches since the last update

    @property
    def step_size(self) -> float:
        """How far p moves at one update."""
        c = self.config
        return self.batch_size * c.interval / (c.kimg * 1000)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add D's logits on (augmented) reals of this rank; any shape."""
        logits = real_logits.detach()
        self.accumulate_signs(logits.sign().sum(dtype=torch.float64), logits.numel())

    def accumulate_signs(self, signs_sum: torch.Tensor | float, count: torch.Tensor | int) -> None:
        """Add a pre-summed sign(D(real)) and the number of logits it covers."""
        self._acc[0] += torch.as_tensor(signs_sum, dtype=torch.float64).to(self.device).reshape(())
        self._acc[1] += torch.as_tensor(count, dtype=torch.float64).to(self.device).reshape(())

    def end_batch(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> bool:
        """Count one batch; on every ``interval``-th, update p. True when p was updated.

        ``reduce`` returns the sum over ranks of a [2] float64 tensor on ``device`` (e.g. a
        wrapper of ``torch.distributed.all_reduce``); every rank must call ``end_batch`` at
        the same batches.
        """
        self._batches += 1
        if self._batches < self.config.interval:
            return False
        self._batches = 0
        acc = self._acc
        self._acc = torch.zeros(2, dtype=torch.float64, device=self.device)
        if reduce is not None:
            acc = reduce(acc)
        total, count = (float(v) for v in acc.cpu())
        if count <= 0:
            return False
        self.rt = total / count
        direction = (self.rt > self.config.target) - (self.rt < self.config.target)  # sign(r_t - target)
        self.p = max(self.p + direction * self.step_size, 0.0)
        return True

    def state_dict(self) -> dict[str, Any]:
        """Plain values: p, r_t, the pending accumulators and the batch phase (for exact resume)."""
        acc = [float(v) for v in self._acc.cpu()]
        return {"p": self.p, "rt": self.rt, "signs_sum": acc[0], "signs_n": acc[1], "batches": self._batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
        if not (math.isfinite(self.p) and self.p >= 0):
            raise CleftGanError(f"checkpointed ADA p must be a finite number >= 0, got {self.p!r}")
        self.rt = None if state.get("rt") is None else float(state["rt"])
        pending = [float(state.get("signs_sum", 0.0)), float(state.get("signs_n", 0.0))]
        self._acc = torch.tensor(pending, dtype=torch.float64, device=self.device)
        self._batches = int(state.get("batches", 0))

"""The fine-tune training loop, in named blocks: resume, step, tick, snapshot, stop.

``train`` runs a ``Trainer`` to the recipe's end. It resumes from the stage's latest
checkpoint (or the one it is told to start from), logs a line of stats every tick and a
progress line with rate and ETA, and at every snapshot writes the sample grid, the metrics,
stats.jsonl, curves.png and a checkpoint; rank 0 also logs ticks and snapshots as TensorBoard
events (``tensorboard.py``), uploaded with each checkpoint. Asked to stop (SIGTERM, SIGUSR2, a
dead launcher) it checkpoints and raises ``StopRequested``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.training import distributed
from cleftgan_hpc.training.recipe import Recipe
from cleftgan_hpc.training.snapshot import curves_png, sample_grid
from cleftgan_hpc.training.state import CheckpointStore, stats_jsonl
from cleftgan_hpc.training.tensorboard import TrainingEvents
from cleftgan_hpc.training.trainer import Trainer

SnapshotHook = Callable[[dict[str, Any]], None]
Metrics = Callable[[torch.nn.Module], dict[str, float]]  # G_ema -> {name: value}, a collective


def train(
    recipe: Recipe,
    ctx: StageContext,
    trainer: Trainer,
    *,
    metrics: Metrics | None = None,
    on_snapshot: SnapshotHook | None = None,
    start_from: str | None = None,
) -> None:
    """Train to the end of ``recipe``; resume from this stage's latest checkpoint when there is one.

    ``on_snapshot`` receives {"kimg", "step", "checkpoint", <metrics>} after each snapshot's
    checkpoint is written (a sweep reports it to Ray Tune); ``start_from`` is the store key of
    a checkpoint to start from instead (a sweep trial cloned from another by PBT).
    """
    d, log = trainer.dist_env, trainer.log
    ckpts = CheckpointStore(ctx.store, ctx.key("checkpoints"), recipe.keep_checkpoints, ctx.scratch / "checkpoints")
    state = _resume(recipe, ctx, trainer, ckpts, start_from)
    prog = trainer.progress
    log(
        f"training {recipe.kimg:g} kimg = {recipe.total_steps} steps of batch {recipe.batch} on "
        f"{d.world_size} x {trainer.device.type}, {recipe.rounds} round(s) of {recipe.batch_per_round} per process"
    )
    ticker = Ticker(recipe.total_nimg, log)
    history: list[dict[str, float]] = list(state.get("metrics", [])) if state else []
    # the stats of the tick in progress: checkpointed, so a resumed run logs the ticks an
    # uninterrupted one would
    window: dict[str, list[float]] = {k: list(v) for k, v in (state or {}).get("stats_window", {}).items()}
    events = TrainingEvents(ctx.store, ctx.key("tensorboard"), ctx.scratch / "tensorboard", prog.cur_nimg,
                            ctx.log) if d.is_main else None

    def checkpoint() -> str | None:
        if not d.is_main:
            return None
        payload = trainer.state()
        payload["metrics"] = history
        payload["stats_window"] = {k: [float(x) for x in v] for k, v in window.items()}
        payload["config_hash"] = recipe.resume_digest
        payload["finished_config_hash"] = recipe.finished_digest
        payload["recipe"] = recipe.as_dict()
        key = ckpts.save(payload, prog.step, prog.best_key, ctx.log)
        if events is not None:  # after the checkpoint: stored events never run past it
            events.upload()
        return key

    t_attempt = time.monotonic()
    reported = False
    while prog.step < recipe.total_steps:
        prev = prog.cur_nimg
        stats = trainer.step()
        last = prog.step == recipe.total_steps
        for k, v in stats.items():
            window.setdefault(k, []).append(v)
        if recipe.tick_due(prev, prog.cur_nimg) or last:
            rec = {k: float(np.mean(v)) for k, v in window.items()}
            rec["kimg"] = prog.cur_nimg / 1000
            prog.stats.append(rec)
            window.clear()
            if events is not None:
                events.tick(prog.cur_nimg, rec)
        ticker.maybe(prog.cur_nimg, stats, force=last)
        prog.train_seconds += time.monotonic() - t_attempt
        t_attempt = time.monotonic()
        checkpointed = False
        if recipe.snapshot_due(prev, prog.cur_nimg) or last:
            values = metrics(trainer.nets.G_ema) if metrics is not None else {}  # a collective: every rank
            if d.is_main:
                snapshot(recipe, ctx, trainer, history, values, events)
            if values and (prog.best_metric is None or values[recipe.metrics[0]] < prog.best_metric):
                prog.best_metric, prog.best_key = values[recipe.metrics[0]], ckpts.key_for(prog.step)
            key = checkpoint()
            checkpointed = True
            if on_snapshot is not None and d.is_main:
                on_snapshot({"kimg": prog.cur_nimg / 1000, "step": prog.step, "checkpoint": key, **values})
                reported = True
        if not last and _stop_requested(ctx, d):
            if not checkpointed:
                checkpoint()
            raise StopRequested(f"at step {prog.step} (kimg {prog.cur_nimg / 1000:.2f})")

    if on_snapshot is not None and d.is_main and not reported and history:
        # Resumed after the end (e.g. a restored sweep trial): report where training finished.
        on_snapshot(
            {
                "kimg": prog.cur_nimg / 1000,
                "step": prog.step,
                "checkpoint": ckpts.key_for(prog.step),
                **{k: v for k, v in history[-1].items() if k != "kimg"},
            }
        )


def _resume(
    recipe: Recipe, ctx: StageContext, trainer: Trainer, ckpts: CheckpointStore, start_from: str | None
) -> dict[str, Any] | None:
    """Load the state to continue from (and check it may be continued under this recipe), or
    make every rank start from rank 0's weights."""
    d = trainer.dist_env
    if start_from:  # a sweep trial restored by Tune, or a PBT clone of another trial
        state = ckpts.load(start_from)
        ckpts.drop_after(int(state["progress"]["step"]), keep=start_from)  # they belong to another trajectory
    else:
        state = ckpts.load_latest()
        if state is not None and state.get("config_hash", recipe.resume_digest) != recipe.resume_digest:
            raise CleftGanError(
                f"the checkpoints under {ctx.store.uri(ckpts.prefix)} were written with another training config; "
                "run the stage with --force to start over"
            )
    if state is None:
        for m in (trainer.nets.G, trainer.nets.D, trainer.nets.G_ema):
            distributed.broadcast_module(m, d.world_size)
        return None
    trainer.load_state(state)
    if start_from and not start_from.startswith(ckpts.prefix + "/"):
        trainer.progress.best_metric = trainer.progress.best_key = None  # the donor's best is not ours
    where = f" ({start_from})" if start_from else ""
    trainer.log(f"resumed from step {trainer.progress.step} (kimg {trainer.progress.cur_nimg / 1000:.2f}){where}")
    step = trainer.progress.step
    if not start_from and step >= recipe.total_steps:
        # nothing left to train: exporting these weights as this config's result is right only
        # if they were trained with it (a sweep's restored trial passes start_from instead)
        if step > recipe.total_steps:
            raise CleftGanError(
                f"the checkpoints are at step {step}, past this config's kimg {recipe.kimg:g} "
                f"({recipe.total_steps} steps): raise kimg to continue, or run the stage with --force to start over"
            )
        if state.get("finished_config_hash", recipe.finished_digest) != recipe.finished_digest:
            raise CleftGanError(
                "this stage already trained to the end with other settings; raise kimg to continue with the "
                "new ones, or run the stage with --force to start over"
            )
    return state


def _stop_requested(ctx: StageContext, d: distributed.DistEnv) -> bool:
    flag = torch.tensor([1.0 if ctx.should_stop() else 0.0])
    return bool(distributed.all_sum(flag, d.world_size).item() > 0)


def snapshot(
    recipe: Recipe, ctx: StageContext, trainer: Trainer, history: list[dict[str, float]], values: dict[str, float],
    events: TrainingEvents | None = None,
) -> None:
    """Grid, metric history, stats, curves and TensorBoard events of the current state (rank 0)."""
    prog = trainer.progress
    kimg = prog.cur_nimg / 1000
    tag = f"{prog.cur_nimg:09d}"  # images shown
    grid = sample_grid(trainer.nets.G_ema, recipe.grid_seeds, trainer.device)
    ctx.store.put_bytes(ctx.key("samples", f"grid-{tag}.png"), grid)
    if values:
        history.append({"kimg": kimg, **values})
        ctx.store.put_text(ctx.key("metrics.jsonl"), stats_jsonl(history))
    ctx.store.put_text(ctx.key("stats.jsonl"), stats_jsonl(prog.stats))
    ctx.store.put_bytes(ctx.key("curves.png"), curves_png(prog.stats, history))
    if events is not None:
        events.snapshot(prog.cur_nimg, values, grid)
    shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
    ctx.log.info(f"snapshot at kimg {kimg:.2f}: samples/grid-{tag}.png {shown}".rstrip())


class Ticker:
    """Periodic progress lines: kimg, rate, ETA, losses and p."""

    def __init__(self, total_nimg: int, log: Callable[[str], None], interval: float = 10.0) -> None:
        self.total, self.log, self.interval = total_nimg, log, interval
        self.t0 = self.last = time.monotonic()
        self.n0: int | None = None

    def maybe(self, cur_nimg: int, stats: dict[str, float], force: bool = False) -> bool:
        now = time.monotonic()
        if self.n0 is None:  # the rate counts from the first step, not from set-up
            self.n0, self.t0, self.last = cur_nimg, now, now
            if not force:
                return False
        if not force and now - self.last < self.interval:
            return False
        self.last = now
        done = cur_nimg - self.n0
        rate = done / max(now - self.t0, 1e-9)  # images/s this attempt
        eta = (self.total - cur_nimg) / rate if rate > 0 else float("inf")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) and eta < 86400 * 30 else "?"
        losses = " ".join(f"{k} {v:.3f}" for k, v in sorted(stats.items()) if k != "augment_p")
        self.log(
            f"kimg {cur_nimg / 1000:.2f}/{self.total / 1000:g} ({100 * cur_nimg / self.total:.0f}%) "
            f"{1000 / rate if rate else float('inf'):.1f} s/kimg {rate:.1f} img/s ETA {eta_s} "
            f"p {stats.get('augment_p', 0):.3f} {losses}"
        )
        return True

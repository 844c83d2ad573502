"""The finetune stage: transfer-learn a StyleGAN3 network to a small dataset with ADA.

Resumes from the stage's own latest checkpoint in the store whenever one exists, so a
requeued Slurm job or a re-run after a crash continues where it stopped. On SIGTERM/SIGUSR2
it finishes the step, checkpoints, and exits 75 (requeue me).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.data.dataset import open_dataset
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.stages import FinetuneStage
from cleftgan_hpc.training import distributed
from cleftgan_hpc.training.loop import (
    Networks,
    Ticker,
    TrainData,
    Trainer,
    copy_networks,
    snapshot_due,
    total_steps,
)
from cleftgan_hpc.training.snapshot import curves_png, sample_grid
from cleftgan_hpc.training.snapshot_metrics import SnapshotMetrics
from cleftgan_hpc.training.state import CheckpointStore, stats_jsonl


def load_data(cfg: FinetuneStage, ctx: StageContext) -> tuple[TrainData, dict[str, Any], Path]:
    path = ctx.fetch(cfg.dataset)
    ds = open_dataset(path)
    images = torch.from_numpy(ds.array("NCHW").copy())  # [N, C, H, W] uint8
    labels = None
    if cfg.conditional:
        if ds.labels is None:
            raise CleftGanError(f"conditional: true, but the dataset {cfg.dataset} has no labels (dataset.json)")
        if ds.labels.dtype.kind in "iu":
            if ds.labels.min() < 0:
                raise CleftGanError("integer dataset labels must be class indices >= 0")
            labels = torch.nn.functional.one_hot(torch.from_numpy(ds.labels), int(ds.labels.max()) + 1).float()
        else:
            labels = torch.from_numpy(ds.labels.reshape(len(ds), -1)).float()
    kwargs = {
        "path": cfg.dataset,
        "resolution": ds.resolution,
        "max_size": len(ds),
        "use_labels": cfg.conditional,
        "xflip": cfg.mirror,
    }
    ctx.log.info(
        f"dataset {path.name}: {len(ds)} images at {ds.resolution}x{ds.resolution}, "
        f"{'labels ' + str(tuple(labels.shape[1:])) if labels is not None else 'no labels'}, "
        f"mirror {'on' if cfg.mirror else 'off'}"
    )
    return TrainData(images, labels, cfg.mirror), kwargs, path


def build_networks(cfg: FinetuneStage, ctx: StageContext, data: TrainData, device: torch.device) -> Networks:
    from cleftgan_hpc.model import Discriminator, Generator, load_network

    res, channels = data.images.shape[-1], data.images.shape[1]
    c_dim = data.labels.shape[1] if data.labels is not None else 0
    fp16_res = 4 if device.type == "cuda" and cfg.precision in ("auto", "fp16", "bf16") else 0
    low = "bfloat16" if cfg.precision == "bf16" else "float16"
    if cfg.network == "random":
        r = cfg.random_network
        is_r = cfg.cfg == "stylegan3-r"
        mult = 2 if is_r else 1
        torch.manual_seed(cfg.seed)  # the initial weights are part of the run's seed
        G = Generator(
            r.z_dim,
            c_dim,
            r.w_dim,
            res,
            channels,
            mapping_kwargs={"num_layers": r.mapping_layers},
            channel_base=r.channel_base * mult,
            channel_max=r.channel_max * mult,
            num_fp16_res=fp16_res,
            low_precision_dtype=low,
            conv_kernel=1 if is_r else 3,
            use_radial_filters=is_r,
            magnitude_ema_beta=0.5 ** (cfg.batch / 20000),
        )
        D = Discriminator(
            c_dim,
            res,
            channels,
            channel_base=r.channel_base,
            channel_max=r.channel_max,
            num_fp16_res=fp16_res,
            low_precision_dtype=low,
        )
        nets = copy_networks(G, D, None)
    else:
        net = load_network(ctx.fetch(cfg.network))
        if net.G is None or net.D is None:
            raise CleftGanError(
                f"{cfg.network}: fine-tuning needs G and D; this file holds "
                f"{[k for k in ('G', 'D', 'G_ema') if getattr(net, k) is not None]}"
            )
        G, D = net.G, net.D
        if G.img_resolution != res or G.img_channels != channels:
            raise CleftGanError(
                f"the network makes {G.img_resolution}x{G.img_resolution}x{G.img_channels} images but the dataset "
                f"holds {res}x{res}x{channels}: preprocess to resolution {G.img_resolution}"
            )
        if G.c_dim != c_dim:
            raise CleftGanError(
                f"the network expects labels of width {G.c_dim}, the dataset gives {c_dim} "
                "(set conditional to match the network)"
            )
        nets = copy_networks(G, D, net.G_ema)
    for m in (nets.G, nets.D, nets.G_ema):
        m.to(device)
    return nets


def make_augment(cfg: FinetuneStage, device: torch.device) -> Any:
    if cfg.augment == "none":
        return None
    from cleftgan_hpc.training.augment import AugmentConfig, AugmentPipe

    spec = cfg.augment if isinstance(cfg.augment, str) else [(op.op, op.weight) for op in cfg.augment]
    return AugmentPipe(AugmentConfig.from_spec(spec), p=cfg.augment_p or 0.0).to(device)


SnapshotHook = Callable[[dict[str, Any]], None]


def training_config_hash(cfg: FinetuneStage) -> str:
    """What a checkpoint must agree with to be resumed: everything but the kind's reusable
    changes (length, snapshots, the learning-rate/ADA knobs a sweep's PBT may change)."""
    data = cfg.model_dump(mode="json", exclude={"needs", "resources", *FinetuneStage.reusable_changes})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def finished_config_hash(cfg: FinetuneStage) -> str:
    """What a run that has already trained to the end must agree with to be exported again:
    everything but the length and how many checkpoints are kept (a longer kimg trains further)."""
    data = cfg.model_dump(mode="json", exclude={"needs", "resources", "kimg", "keep_checkpoints"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def run(
    cfg: FinetuneStage, ctx: StageContext, *, on_snapshot: SnapshotHook | None = None, start_from: str | None = None
) -> dict[str, str]:
    """Train; resume from this stage's latest checkpoint when there is one.

    ``on_snapshot`` receives {"kimg", "step", "checkpoint", <metrics>} after each snapshot's
    checkpoint is written (a sweep reports it to Ray Tune); ``start_from`` is the store key of
    a checkpoint to start from instead (a sweep trial cloned from another by PBT).
    """
    d = distributed.detect()
    device = torch.device(f"cuda:{d.local_rank}" if ctx.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    distributed.init(d, device)
    try:
        return _train(cfg, ctx, d, device, on_snapshot, start_from)
    finally:
        distributed.shutdown()


def _train(
    cfg: FinetuneStage,
    ctx: StageContext,
    d: distributed.DistEnv,
    device: torch.device,
    on_snapshot: SnapshotHook | None,
    start_from: str | None,
) -> dict[str, str]:
    log = ctx.log.info if d.is_main else (lambda _msg: None)
    data, set_kwargs, dataset_file = load_data(cfg, ctx)
    nets = build_networks(cfg, ctx, data, device)
    trainer = Trainer(cfg, nets, data, make_augment(cfg, device), device, d, log)
    ckpts = CheckpointStore(ctx.store, ctx.key("checkpoints"), cfg.keep_checkpoints, ctx.scratch / "checkpoints")
    config_hash = training_config_hash(cfg)
    if start_from:  # a sweep trial restored by Tune, or a PBT clone of another trial
        state = ckpts.load(start_from)
        ckpts.drop_after(int(state["progress"]["step"]), keep=start_from)  # they belong to another trajectory
    else:
        state = ckpts.load_latest()
        if state is not None and state.get("config_hash", config_hash) != config_hash:
            raise CleftGanError(
                f"the checkpoints under {ctx.store.uri(ckpts.prefix)} were written with another training config; "
                "run the stage with --force to start over"
            )
    if state is not None:
        trainer.load_state(state)
        if start_from and not start_from.startswith(ckpts.prefix + "/"):
            trainer.progress.best_metric = trainer.progress.best_key = None  # the donor's best is not ours
        where = f" ({start_from})" if start_from else ""
        log(f"resumed from step {trainer.progress.step} (kimg {trainer.progress.cur_nimg / 1000:.2f}){where}")
    else:
        for m in (nets.G, nets.D, nets.G_ema):
            distributed.broadcast_module(m, d.world_size)
    if state is not None and not start_from and trainer.progress.step >= total_steps(cfg):
        # nothing left to train: exporting these weights as this config's result is right only
        # if they were trained with it (a sweep's restored trial passes start_from instead)
        if trainer.progress.step > total_steps(cfg):
            raise CleftGanError(
                f"the checkpoints are at step {trainer.progress.step}, past this config's kimg {cfg.kimg:g} "
                f"({total_steps(cfg)} steps): raise kimg to continue, or run the stage with --force to start over"
            )
        if state.get("finished_config_hash", finished_config_hash(cfg)) != finished_config_hash(cfg):
            raise CleftGanError(
                "this stage already trained to the end with other settings; raise kimg to continue with the "
                "new ones, or run the stage with --force to start over"
            )
    metrics = None
    if cfg.metrics:  # on every rank: each generates a slice of the metric images
        assert cfg.feature_extractor is not None  # the config validator guarantees it
        metrics = SnapshotMetrics(
            cfg.metrics, cfg.feature_extractor, dataset_file, data, cfg.metric_samples, cfg.seed, ctx, device,
            rank=d.rank, world_size=d.world_size,
        )
    prog = trainer.progress
    steps = total_steps(cfg)
    total_nimg = steps * cfg.batch
    log(
        f"training {cfg.kimg:g} kimg = {steps} steps of batch {cfg.batch} on {d.world_size} x {device.type}, "
        f"{trainer.rounds} round(s) of {trainer.per_round} per process"
    )
    ticker = Ticker(total_nimg, log)
    history: list[dict[str, float]] = list(state.get("metrics", [])) if state else []
    # the stats of the tick in progress: checkpointed, so a resumed run logs the ticks an
    # uninterrupted one would
    window: dict[str, list[float]] = {k: list(v) for k, v in (state or {}).get("stats_window", {}).items()}
    tick_nimg = tick_images(total_nimg, cfg.batch)

    def checkpoint() -> str | None:
        if not d.is_main:
            return None
        payload = trainer.state()
        payload["metrics"] = history
        payload["stats_window"] = {k: [float(x) for x in v] for k, v in window.items()}
        payload["config_hash"] = config_hash
        payload["finished_config_hash"] = finished_config_hash(cfg)
        return ckpts.save(payload, prog.step, prog.best_key, ctx.log)

    t_attempt = time.monotonic()
    reported = False
    while prog.step < steps:
        prev = prog.cur_nimg
        stats = trainer.step()
        for k, v in stats.items():
            window.setdefault(k, []).append(v)
        if math.floor(prog.cur_nimg / tick_nimg) > math.floor(prev / tick_nimg) or prog.step == steps:
            rec = {k: float(np.mean(v)) for k, v in window.items()}
            rec["kimg"] = prog.cur_nimg / 1000
            prog.stats.append(rec)
            window.clear()
        ticker.maybe(prog.cur_nimg, stats, force=prog.step == steps)
        prog.train_seconds += time.monotonic() - t_attempt
        t_attempt = time.monotonic()
        checkpointed = False
        if snapshot_due(cfg, prev, prog.cur_nimg) or prog.step == steps:
            values = metrics(trainer.nets.G_ema) if metrics is not None else {}  # a collective: every rank
            if d.is_main:
                snapshot(cfg, ctx, trainer, history, values, device)
            if values and (prog.best_metric is None or values[cfg.metrics[0]] < prog.best_metric):
                prog.best_metric, prog.best_key = values[cfg.metrics[0]], ckpts.key_for(prog.step)
            key = checkpoint()
            checkpointed = True
            if on_snapshot is not None and d.is_main:
                on_snapshot({"kimg": prog.cur_nimg / 1000, "step": prog.step, "checkpoint": key, **values})
                reported = True
        if prog.step < steps and _stop_requested(ctx, d):
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
    outputs = {name: ctx.key(fname) for name, fname in FinetuneStage.outputs.items()}
    if d.is_main:
        export_network(cfg, ctx, nets, prog.ada_p, set_kwargs, outputs["network"])
    return outputs


def tick_images(total_nimg: int, batch: int) -> int:
    """Images per line of stats.jsonl: about 100 lines a run, at most 4 kimg apart."""
    return max(batch, int(min(4000, total_nimg / 100)))


def _stop_requested(ctx: StageContext, d: distributed.DistEnv) -> bool:
    flag = torch.tensor([1.0 if ctx.should_stop() else 0.0])
    return bool(distributed.all_sum(flag, d.world_size).item() > 0)


def snapshot(
    cfg: FinetuneStage,
    ctx: StageContext,
    trainer: Trainer,
    history: list[dict[str, float]],
    values: dict[str, float],
    device: torch.device,
) -> None:
    """Grid, metric history, stats and curves of the current state (rank 0)."""
    prog = trainer.progress
    kimg = prog.cur_nimg / 1000
    tag = f"{prog.cur_nimg:09d}"  # images shown
    ctx.store.put_bytes(ctx.key("samples", f"grid-{tag}.png"), sample_grid(trainer.nets.G_ema, cfg.grid_seeds, device))
    if values:
        history.append({"kimg": kimg, **values})
        ctx.store.put_text(ctx.key("metrics.jsonl"), stats_jsonl(history))
    ctx.store.put_text(ctx.key("stats.jsonl"), stats_jsonl(prog.stats))
    ctx.store.put_bytes(ctx.key("curves.png"), curves_png(prog.stats, history))
    shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
    ctx.log.info(f"snapshot at kimg {kimg:.2f}: samples/grid-{tag}.png {shown}".rstrip())


def export_network(
    cfg: FinetuneStage, ctx: StageContext, nets: Networks, augment_p: float, set_kwargs: dict[str, Any], key: str
) -> None:
    from cleftgan_hpc.model import Network, save_checkpoint

    path = ctx.scratch / "network.safetensors"
    net = Network(
        nets.G,
        nets.D,
        nets.G_ema,
        augment_p,
        set_kwargs,
        extra={"stage": ctx.stage, "run": ctx.run_id, "kimg": cfg.kimg, "config": json.loads(cfg.model_dump_json())},
    )
    save_checkpoint(net, path)
    ctx.store.put_file(key, path)
    ctx.log.info(f"network -> {ctx.store.uri(key)}")


def export_checkpoint(cfg: FinetuneStage, ctx: StageContext, checkpoint_key: str, out_key: str) -> None:
    """Write the networks of a training checkpoint as a network file (a sweep promotes its best trial)."""
    data, set_kwargs, _ = load_data(cfg, ctx)
    nets = build_networks(cfg, ctx, data, torch.device("cpu"))
    state = CheckpointStore(ctx.store, ctx.key("checkpoints"), 1, ctx.scratch).load(checkpoint_key)
    nets.G.load_state_dict(state["G"])
    nets.D.load_state_dict(state["D"])
    nets.G_ema.load_state_dict(state["G_ema"])
    export_network(cfg, ctx, nets, float(state["progress"]["ada_p"]), set_kwargs, out_key)

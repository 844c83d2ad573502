"""The finetune stage: transfer-learn a StyleGAN3 network to a small dataset with ADA.

The stage turns its config into a ``Recipe`` (every derived value, logged and stored in each
checkpoint), loads the data and the networks, and hands them to ``training.loop.train``; at
the end it exports the trained networks. It resumes from its own latest checkpoint in the
store whenever one exists, so a requeued Slurm job or a re-run after a crash continues where
it stopped. On SIGTERM/SIGUSR2 it finishes the step, checkpoints, and exits 75 (requeue me).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.data.dataset import open_dataset
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.models import config_digest
from cleftgan_hpc.jobspec.stages import FinetuneStage
from cleftgan_hpc.seeds import derive_seed
from cleftgan_hpc.training import distributed
from cleftgan_hpc.training.loop import train
from cleftgan_hpc.training.recipe import (
    PL_BATCH_SHRINK,
    PL_DECAY,
    PL_INTERVAL,
    PL_NO_WEIGHT_GRAD,
    PL_WEIGHT,
    R1_INTERVAL,
    STYLEGAN2_MIXING_PROB,
    AdamSettings,
    Recipe,
    schedule,
)
from cleftgan_hpc.training.snapshot_metrics import SnapshotMetrics
from cleftgan_hpc.training.state import CheckpointStore
from cleftgan_hpc.training.trainer import Networks, TrainData, Trainer, copy_networks

SnapshotHook = Callable[[dict[str, Any]], None]


def make_recipe(cfg: FinetuneStage, device_type: str = "cpu", world_size: int | None = None) -> Recipe:
    """Every value training uses, from the config and where it trains: the device type and
    the data-parallel processes that really run (the config's by default)."""
    world = world_size or cfg.world_size
    steps, total_nimg, tick_nimg = schedule(cfg.kimg, cfg.batch)
    per_process = cfg.batch // world
    per_round = cfg.batch_per_gpu or per_process
    if cfg.batch % world or per_process % per_round:
        raise CleftGanError(
            f"batch {cfg.batch} does not split over the {world} processes that run"
            + (f" in rounds of batch_per_gpu {cfg.batch_per_gpu}" if cfg.batch_per_gpu else "")
        )
    low_precision = device_type == "cuda" and cfg.precision in ("auto", "fp16", "bf16")
    sg2 = cfg.cfg == "stylegan2"  # the reference's StyleGAN2 recipe: style mixing, lazy path length
    pl_interval = PL_INTERVAL if sg2 else None
    return Recipe(
        batch=cfg.batch,
        world_size=world,
        batch_per_process=per_process,
        batch_per_round=per_round,
        rounds=per_process // per_round,
        seed=cfg.seed,
        kimg=cfg.kimg,
        total_steps=steps,
        total_nimg=total_nimg,
        snapshot_nimg=cfg.snapshot_kimg * 1000,
        tick_nimg=tick_nimg,
        keep_checkpoints=cfg.keep_checkpoints,
        metrics=tuple(cfg.metrics),
        metric_samples=cfg.metric_samples,
        grid_seeds=cfg.grid_seeds,
        g_adam=AdamSettings.for_interval(cfg.glr, pl_interval),
        d_adam=AdamSettings.for_interval(cfg.dlr, R1_INTERVAL),
        r1_gamma=cfg.gamma,
        r1_interval=R1_INTERVAL,
        freeze_d=cfg.freeze_d,
        style_mixing_prob=STYLEGAN2_MIXING_PROB if sg2 else 0.0,
        pl_interval=pl_interval,
        pl_weight=PL_WEIGHT if sg2 else 0.0,
        pl_batch_shrink=PL_BATCH_SHRINK,
        pl_batch_per_round=max(per_round // PL_BATCH_SHRINK, 1),
        pl_decay=PL_DECAY,
        pl_no_weight_grad=PL_NO_WEIGHT_GRAD,
        ema_nimg=(cfg.ema_kimg if cfg.ema_kimg is not None else cfg.batch * 10 / 32) * 1000,  # the reference's
        ema_rampup=cfg.ema_rampup,
        augment=None if cfg.augment == "none" else (
            cfg.augment if isinstance(cfg.augment, str) else tuple((op.op, op.weight) for op in cfg.augment)
        ),
        augment_p=cfg.augment_p,
        ada_target=cfg.ada_target,
        ada_interval=cfg.ada_interval,
        ada_kimg=cfg.ada_kimg,
        blur_init_sigma=10.0 if cfg.cfg == "stylegan3-r" else 0.0,
        blur_fade_nimg=cfg.batch * 200 / 32 * 1e3,  # the reference's blur_fade_kimg = batch * 200 / 32
        mirror=cfg.mirror,
        conditional=cfg.conditional,
        architecture=cfg.cfg,
        num_fp16_res=4 if low_precision else 0,
        low_precision_dtype="bfloat16" if cfg.precision == "bf16" else "float16",
        magnitude_ema_beta=0.5 ** (cfg.batch / 20000),
        resume_digest=config_digest(
            cfg.model_dump(mode="json", exclude={"needs", "resources", *FinetuneStage.reusable_changes})
        ),
        finished_digest=config_digest(
            cfg.model_dump(mode="json", exclude={"needs", "resources", "kimg", "keep_checkpoints"})
        ),
    )


def load_data(cfg: FinetuneStage, ctx: StageContext) -> tuple[TrainData, dict[str, Any], Path]:
    path = ctx.fetch(cfg.dataset)
    ds = open_dataset(path)
    check_max_images(ctx.stage, cfg.max_images, len(ds), cfg.dataset)
    picked = subset(len(ds), cfg.max_images, cfg.subset_seed, cfg.dataset)
    images = torch.from_numpy(ds.array("NCHW")[picked].copy())  # [N, C, H, W] uint8
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
        labels = labels[torch.from_numpy(picked)]
    kwargs = {
        "path": cfg.dataset,
        "resolution": ds.resolution,
        "max_size": len(picked),
        "use_labels": cfg.conditional,
        "xflip": cfg.mirror,
    }
    if cfg.max_images is not None:  # which images, for anyone reading the outputs later
        kwargs.update(subset_of=len(ds), subset_seed=cfg.subset_seed)
        names = [ds.names[i] for i in picked]
        ctx.store.put_json(ctx.key("subset.json"), {"of": len(ds), "seed": cfg.subset_seed, "images": names})
    ctx.log.info(
        f"dataset {path.name}: {len(picked)}{f' of {len(ds)}' if len(picked) != len(ds) else ''} images at "
        f"{ds.resolution}x{ds.resolution}, "
        f"{'labels ' + str(tuple(labels.shape[1:])) if labels is not None else 'no labels'}, "
        f"mirror {'on' if cfg.mirror else 'off'}"
    )
    return TrainData(images, labels, cfg.mirror), kwargs, path


def check_max_images(stage: str, max_images: int | None, count: int, dataset: str) -> None:
    """Refuse, before anything trains, a max_images the dataset cannot fill (validate catches
    it where the spec tells the size; a dataset made by a stage or read from the store shows it here)."""
    if max_images is not None and max_images > count:
        raise CleftGanError(
            f"stage {stage}: max_images {max_images} is more than the {count} images of its dataset {dataset}; "
            f"use at most {count}, or null for all of them"
        )


def subset(count: int, max_images: int | None, seed: int, what: str) -> np.ndarray:
    """Indices of the training images: all, or ``max_images`` of them picked by ``seed`` alone
    (sorted, so the subset of a larger max_images with the same seed is not a superset: each
    size is its own draw, as the paper's 250 and 450)."""
    if max_images is None:
        return np.arange(count)
    if max_images > count:
        raise CleftGanError(f"max_images {max_images} is more than the {count} images of {what}")
    order = np.random.RandomState(derive_seed("subset", seed, max_images) % 2**32).permutation(count)
    return np.sort(order[:max_images])


def build_networks(
    cfg: FinetuneStage, recipe: Recipe, ctx: StageContext, data: TrainData, device: torch.device
) -> Networks:
    from cleftgan_hpc.model import Discriminator, Generator, StyleGAN2Generator, load_network

    res, channels = data.images.shape[-1], data.images.shape[1]
    c_dim = data.labels.shape[1] if data.labels is not None else 0
    if cfg.network == "random":
        r = cfg.random_network
        is_r = recipe.architecture == "stylegan3-r"
        mult = 2 if is_r else 1
        torch.manual_seed(recipe.seed)  # the initial weights are part of the run's seed
        if recipe.architecture == "stylegan2":
            G = StyleGAN2Generator(
                r.z_dim,
                c_dim,
                r.w_dim,
                res,
                channels,
                mapping_kwargs={"num_layers": r.mapping_layers},  # 8 unless set (the settings resolve it)
                channel_base=r.channel_base,
                channel_max=r.channel_max,
                num_fp16_res=recipe.num_fp16_res,
                low_precision_dtype=recipe.low_precision_dtype,
            )
        else:
            G = Generator(
                r.z_dim,
                c_dim,
                r.w_dim,
                res,
                channels,
                mapping_kwargs={"num_layers": r.mapping_layers},
                channel_base=r.channel_base * mult,
                channel_max=r.channel_max * mult,
                num_fp16_res=recipe.num_fp16_res,
                low_precision_dtype=recipe.low_precision_dtype,
                conv_kernel=1 if is_r else 3,
                use_radial_filters=is_r,
                magnitude_ema_beta=recipe.magnitude_ema_beta,
            )
        D = Discriminator(
            c_dim,
            res,
            channels,
            channel_base=r.channel_base,
            channel_max=r.channel_max,
            num_fp16_res=recipe.num_fp16_res,
            low_precision_dtype=recipe.low_precision_dtype,
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
        arch = loaded_architecture(G)
        if arch != cfg.cfg:  # validate catches what a file name tells; the network itself tells here
            raise CleftGanError(
                f"stage {ctx.stage}: cfg {cfg.cfg} does not fit the network {cfg.network}, a {arch} network: a loaded "
                f"network keeps its architecture and cfg picks its training recipe; set cfg: {arch}"
            )
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


def loaded_architecture(G: Any) -> str:
    """stylegan2, stylegan3-r or stylegan3-t: the cfg a generator was built for (R: 1x1 convolutions
    and radial filters)."""
    from cleftgan_hpc.model import StyleGAN2Generator

    if isinstance(G, StyleGAN2Generator):
        return "stylegan2"
    kwargs = getattr(G, "init_kwargs", {}) or {}
    return "stylegan3-r" if kwargs.get("use_radial_filters") or kwargs.get("conv_kernel") == 1 else "stylegan3-t"


def make_augment(recipe: Recipe, device: torch.device) -> Any:
    if recipe.augment is None:
        return None
    from cleftgan_hpc.training.augment import AugmentConfig, AugmentPipe

    spec = recipe.augment if isinstance(recipe.augment, str) else list(recipe.augment)
    return AugmentPipe(AugmentConfig.from_spec(spec), p=recipe.augment_p or 0.0).to(device)


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
        recipe = make_recipe(cfg, device.type, d.world_size)
        log = ctx.log.info if d.is_main else (lambda _msg: None)
        for line in recipe.describe():
            log(line)
        data, set_kwargs, dataset_file = load_data(cfg, ctx)
        nets = build_networks(cfg, recipe, ctx, data, device)
        trainer = Trainer(recipe, nets, data, make_augment(recipe, device), device, d, log)
        metrics = None
        if recipe.metrics:  # on every rank: each generates a slice of the metric images
            assert cfg.feature_extractor is not None  # the config validator guarantees it
            metrics = SnapshotMetrics(
                list(recipe.metrics), cfg.feature_extractor, dataset_file, data, recipe.metric_samples, recipe.seed,
                ctx, device, rank=d.rank, world_size=d.world_size,
            )
        train(recipe, ctx, trainer, metrics=metrics, on_snapshot=on_snapshot, start_from=start_from)
        outputs = {name: ctx.key(fname) for name, fname in FinetuneStage.outputs.items()}
        if d.is_main:
            export_network(cfg, ctx, nets, trainer.progress.ada_p, set_kwargs, outputs["network"])
        distributed.shutdown(synchronise=True)
        return outputs
    finally:
        distributed.shutdown()


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
    nets = build_networks(cfg, make_recipe(cfg), ctx, data, torch.device("cpu"))
    state = CheckpointStore(ctx.store, ctx.key("checkpoints"), 1, ctx.scratch).load(checkpoint_key)
    nets.G.load_state_dict(state["G"])
    nets.D.load_state_dict(state["D"])
    nets.G_ema.load_state_dict(state["G_ema"])
    export_network(cfg, ctx, nets, float(state["progress"]["ada_p"]), set_kwargs, out_key)

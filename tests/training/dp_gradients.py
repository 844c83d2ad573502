"""Record what data-parallel training averages, with the weights frozen (learning rates 0).

``python dp_gradients.py DATASET OUT.pt [CFG]`` runs the first training steps of a tiny network in
this process, or as one rank of several when RANK/WORLD_SIZE/MASTER_* are set (as the local
backend sets them), and rank 0 saves every gradient the optimisers were given (after the
all-reduce) and G's running averages. With the weights frozen, every phase of every step
sees the same weights however the batch is split, so one process accumulating N rounds and
N processes must agree to rounding, on any CPU, whatever threads each uses: the bound needs
no tuning to one machine's summation order (which, with the weights free, Adam would turn
into whole steps on near-zero gradients).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import torch

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.jobspec.stages import FinetuneStage
from cleftgan_hpc.stages import finetune
from cleftgan_hpc.storage.local import LocalStore
from cleftgan_hpc.training import distributed
from cleftgan_hpc.training.trainer import Trainer

STEPS = 2  # step 0 runs G, D and the lazy R1; step 1 runs G and D on the next samples


def main(dataset: str, out: str, arch: str = "stylegan3-t") -> None:
    d = distributed.detect()
    device = torch.device("cpu")
    distributed.init(d, device)
    cfg = FinetuneStage.model_validate(dict(
        kind="finetune", network="random", dataset=dataset, cfg=arch, batch=8, kimg=1, seed=5, augment="bgc", augment_p=0.5,
        random_network={"channel_base": 256, "channel_max": 16, "z_dim": 16, "w_dim": 16},
        processes=d.world_size, batch_per_gpu=4,  # 1 process: 2 rounds of 4; 2 processes: 1 round of 4 each
    ))
    scratch = Path(tempfile.mkdtemp())
    ctx = StageContext(LocalStore(scratch / "store"), "dp", "train", scratch, logging.getLogger("dp"))
    data, _, _ = finetune.load_data(cfg, ctx)
    recipe = finetune.make_recipe(cfg, device.type, d.world_size)
    nets = finetune.build_networks(cfg, recipe, ctx, data, device)
    trainer = Trainer(recipe, nets, data, finetune.make_augment(recipe, device), device, d, lambda _m: None)
    records: list[list[torch.Tensor]] = []
    for opt in (trainer.opt_G, trainer.opt_D):
        for group in opt.param_groups:
            group["lr"] = 0.0
        opt.step = _recording(opt, records)  # type: ignore[method-assign]
    for _ in range(STEPS):
        trainer.step()
    if d.is_main:
        buffers = {k: v.clone() for k, v in nets.G.named_buffers() if k.endswith(("w_avg", "magnitude_ema"))}
        torch.save({"grads": records, "buffers": buffers, "pl_mean": trainer.progress.pl_mean}, out)
    if d.world_size > 1:
        # gloo's teardown (destroy_process_group, or its destructor at interpreter exit) now and
        # then aborts the process ("terminate called without an active exception") after all
        # the work is saved: meet, then leave without tearing anything down
        torch.distributed.barrier()
        sys.stdout.flush()
        os._exit(0)


def _recording(opt: torch.optim.Optimizer, records: list[list[torch.Tensor]]):  # noqa: ANN202
    step = opt.step

    def recorded_step() -> None:
        records.append([
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for g in opt.param_groups for p in g["params"]
        ])
        step()

    return recorded_step


if __name__ == "__main__":
    main(*sys.argv[1:4])

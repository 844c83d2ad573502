"""Training speed: seconds per kimg of the fine-tune loop, with and without ADA.

The CPU case is the parity fixture's configuration (StyleGAN3-T 64x64, z/w 64, channel_base
2048, channel_max 64) at batch 8 with lazy R1, which the reference trains at 12.7 s per step
(about 1,590 s/kimg) on these 2-core machines; the target is at most 160 s/kimg. One R1 cycle
(16 steps) is timed per variant so the regulariser's cost is counted once per 16 steps, as in
training. With a GPU, add --device cuda --res 256 1024 for the T configuration at batch 32.

    python benchmarks/bench_train.py [--steps 16] [--device cpu] [--res 64] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from cleftgan_hpc.jobspec.stages import FinetuneStage
from cleftgan_hpc.model import Discriminator, Generator
from cleftgan_hpc.stages.finetune import make_recipe
from cleftgan_hpc.training import distributed
from cleftgan_hpc.training.augment import AugmentConfig, AugmentPipe
from cleftgan_hpc.training.trainer import TrainData, Trainer, copy_networks

REFERENCE_CPU_S_PER_KIMG = 1590.0  # the reference at the fixture configuration, measured on these machines


def networks(res: int, device: torch.device) -> tuple[Generator, Discriminator]:
    cbase, cmax, z = (2048, 64, 64) if res == 64 else (32768, 512, 512)
    torch.manual_seed(0)
    fp16 = 4 if device.type == "cuda" else 0
    G = Generator(z, 0, z, res, 3, channel_base=cbase, channel_max=cmax, num_fp16_res=fp16,
                  magnitude_ema_beta=0.999)
    D = Discriminator(0, res, 3, channel_base=cbase, channel_max=cmax, num_fp16_res=fp16)
    return G.to(device), D.to(device)


def seconds_per_kimg(res: int, batch: int, steps: int, ada_p: float | None, device: torch.device) -> float:
    G, D = networks(res, device)
    cfg = FinetuneStage(kind="finetune", network="random", dataset="/bench", batch=batch,
                        augment="bgc" if ada_p else "none", augment_p=ada_p, kimg=1)
    data = TrainData(torch.randint(0, 255, [64, 3, res, res], dtype=torch.uint8), None, True)
    augment = AugmentPipe(AugmentConfig.from_spec("bgc"), p=ada_p).to(device) if ada_p else None
    recipe = make_recipe(cfg, device.type)
    trainer = Trainer(recipe, copy_networks(G, D, None), data, augment, device, distributed.DistEnv(), lambda _m: None)
    trainer.step()  # warm-up (allocations, the first R1 step)
    trainer.progress.step = 0  # restart the R1 cycle so the timed steps hold exactly one R1 pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return elapsed / (steps * batch) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--res", type=int, nargs="+", default=[64])
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    for res in a.res:
        rows = [("no augmentation", None), ("ADA, p = 0.2", 0.2)]
        for name, ada in rows:
            s = seconds_per_kimg(res, a.batch, a.steps, ada, device)
            line = f"{res}x{res} batch {a.batch} {name:>16}: {s:8.1f} s/kimg  ({1000 / s:.1f} img/s)"
            if device.type == "cpu" and res == 64:
                line += f"  {REFERENCE_CPU_S_PER_KIMG / s:5.1f}x the reference's {REFERENCE_CPU_S_PER_KIMG:.0f} s/kimg"
                line += "  (target >= 10x)" if ada else ""
            print(line, flush=True)


if __name__ == "__main__":
    main()

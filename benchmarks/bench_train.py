"""Training speed: seconds per kimg of the fine-tune loop, with and without ADA.

The CPU case is the parity fixture's configuration (StyleGAN3-T 64x64, z/w 64, channel_base
2048, channel_max 64) at batch 8 with lazy R1. One R1 cycle (16 steps) is timed per variant,
so the regulariser's cost is counted once per 16 steps, as in training. With ``--reference
DIR`` (a checkout of NVlabs/stylegan3 outside this repository) the reference's own loss,
augmentation and networks train the same configuration in the same run, and every figure is
printed as a ratio to it; the target is at least 10x. With a GPU, add --device cuda --res 256
1024 for the T configuration at batch 32.

    python benchmarks/bench_train.py [--steps 16] [--device cpu] [--res 64] [--batch 8] [--reference DIR]
"""

from __future__ import annotations

import argparse
import time

import machine  # benchmarks/machine.py, beside this script
import torch

from cleftgan_hpc.jobspec.stages import FinetuneStage
from cleftgan_hpc.model import Discriminator, Generator
from cleftgan_hpc.stages.finetune import make_recipe
from cleftgan_hpc.training import distributed
from cleftgan_hpc.training.augment import AugmentConfig, AugmentPipe
from cleftgan_hpc.training.trainer import TrainData, Trainer, copy_networks


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


BGC = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
           brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)  # the reference's 'bgc' pipeline


def reference_seconds_per_kimg(
    ref, res: int, batch: int, steps: int, ada_p: float | None, dev: torch.device = torch.device("cpu")  # noqa: ANN001, B008
) -> float:
    """The reference's training step (its loss phases Gboth, Dmain and, every 16 steps, Dreg,
    each with its Adam step) on the same configuration and device (mixed precision on CUDA,
    as its train.py sets it: the 4 highest resolutions in float16, conv_clamp 256)."""
    cbase, cmax, z = (2048, 64, 64) if res == 64 else (32768, 512, 512)
    torch.manual_seed(0)
    fp16 = dict(num_fp16_res=4, conv_clamp=256) if dev.type == "cuda" else {}
    G = ref.sg3.Generator(z, 0, z, res, 3, channel_base=cbase, channel_max=cmax, magnitude_ema_beta=0.999,
                          **fp16).train().to(dev)
    D = ref.sg2.Discriminator(0, res, 3, channel_base=cbase, channel_max=cmax, **fp16).train().to(dev)
    pipe = ref.augment.AugmentPipe(**BGC).train().to(dev) if ada_p else None
    if pipe is not None:
        pipe.p.copy_(torch.as_tensor(ada_p))
    loss = ref.loss.StyleGAN2Loss(dev, G, D, augment_pipe=pipe, r1_gamma=6.6)
    ratio = 16 / 17
    opt_g = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=0.002 * ratio, betas=(0.0, 0.99**ratio), eps=1e-8)
    real = torch.randn(batch, 3, res, res, device=dev)
    c = torch.zeros(batch, 0, device=dev)

    def step(i: int) -> None:
        phases = [("Gboth", opt_g, G, 1), ("Dmain", opt_d, D, 16)] + ([("Dreg", opt_d, D, 16)] if i % 16 == 0 else [])
        for name, opt, module, gain in phases:
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            loss.accumulate_gradients(name, real, c, torch.randn(batch, z, device=dev), c, gain=gain, cur_nimg=0)
            module.requires_grad_(False)
            opt.step()

    step(0)  # warm-up, as ours
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / (steps * batch) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--res", type=int, nargs="+", default=[64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--reference", metavar="DIR", help="a checkout of NVlabs/stylegan3 to time side by side (CPU)")
    a = p.parse_args()
    device = torch.device(a.device)
    ref = machine.reference(a.reference) if a.reference else None
    print(f"{machine.describe() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, device {device}")
    for res in a.res:
        rows = [("no augmentation", None), ("ADA, p = 0.2", 0.2)]
        for name, ada in rows:
            s = seconds_per_kimg(res, a.batch, a.steps, ada, device)
            line = f"{res}x{res} batch {a.batch} {name:>16}: {s:8.1f} s/kimg  ({1000 / s:.1f} img/s)"
            if ref is not None and device.type == "cpu":
                r = reference_seconds_per_kimg(ref, res, a.batch, a.steps, ada)
                line += f"  | reference {r:8.1f} s/kimg, ours {r / s:5.1f}x faster (target >= 10x)"
            print(line, flush=True)


if __name__ == "__main__":
    main()

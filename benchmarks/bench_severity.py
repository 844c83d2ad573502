"""Speed of the severity index: scored images/s batched vs one image at a time, in one run, and
the GPU cost of 1,000 images at 1024x1024 worked out from operation counts.

    .venv/bin/python benchmarks/bench_severity.py [--config fixture] [--images 8] [--batch 8]
        [--projection-steps 10] [--adaptation-steps 2] [--threads 0]

Measured here (CPU): a StyleGAN3 generator of ``--config`` (bench_networks' configurations),
``--images`` targets (its own images for fixed seeds), scored with the default options but
fewer steps, once with ``batch`` images projected together and once one at a time. Steps
dominate the cost, so the per-image time at the default 300 + 30 steps is extrapolated
linearly.

Worked out (GPU): operation counts of one scored image at 1024 with the defaults (the T-1024
generator's forward and backward, the LPIPS VGG16 at 256), counted by torch's FlopCounterMode
on meta tensors (nothing is computed), set against the same count for one image of a training
step, whose A100 time the StyleGAN3 paper publishes (156.91 s/kimg at batch 32). The
assumptions are printed with the numbers.
"""

from __future__ import annotations

import argparse
import time

import bench_networks  # benchmarks/, beside this script
import machine
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cleftgan_hpc.jobspec.kinds.severity import SeverityIndexOptions
from cleftgan_hpc.model import Discriminator, Generator, ops
from cleftgan_hpc.severity.scorer import SeverityIndex

A100_S_PER_TRAINING_IMAGE = 156.91 / 1000  # StyleGAN3-T 1024, batch 32, 1 A100 (the paper's Table)
DEFAULTS = SeverityIndexOptions()
# beside bench_networks' configurations: a small one where each step's fixed costs (op launches, Python)
# outweigh its arithmetic, as a 1024 network's small early layers do on a GPU
SMALL = {"small32": dict(z_dim=32, w_dim=32, img_resolution=32, channel_base=512, channel_max=32)}


def targets(g: Generator, n: int) -> torch.Tensor:
    from cleftgan_hpc.synthesis.generate import generate_batch

    g.eval().requires_grad_(False)
    return torch.from_numpy(generate_batch(g, list(range(n)), [None] * n, 1.0, None, "cpu")).permute(0, 3, 1, 2)


def measure(g: Generator, images: torch.Tensor, batch: int, args: argparse.Namespace) -> float:
    """Seconds to score ``images`` with ``batch`` images projected together (after a warm-up)."""
    opts = SeverityIndexOptions.model_validate({
        "batch": batch, "projection": {"steps": args.projection_steps, "w_avg_samples": 1000},
        "adaptation": {"steps": args.adaptation_steps},
    })
    index = SeverityIndex(g, opts)
    index.score(images[:1])  # warm-up: the mean w, the adaptation's working copy, allocations
    t0 = time.perf_counter()
    index.score(images)
    return time.perf_counter() - t0


def flops(fn: object) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()  # type: ignore[operator]
    return float(counter.get_total_flops())


def vgg16_lpips(size: int) -> torch.nn.Module:
    """The conv stack LPIPS runs (VGG16's 13 convolutions), for counting only: random weights."""
    layers: list[torch.nn.Module] = []
    cin = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2))
        else:
            layers += [torch.nn.Conv2d(cin, int(v), 3, padding=1), torch.nn.ReLU()]
            cin = int(v)
    return torch.nn.Sequential(*layers)


def gpu_estimate() -> dict[str, float]:
    """GFLOPs per image at 1024: generator pieces, LPIPS, one scored image, one training image."""
    with ops.plain_ops():  # the plain ops run on meta tensors; the fast ones look at values
        g = Generator(512, 0, 512, 1024, 3).to("meta")
        d = Discriminator(0, 1024, 3).to("meta")
        vgg = vgg16_lpips(256).to("meta")
        ws = torch.zeros(1, g.num_ws, 512, device="meta")
        g.requires_grad_(False)
        d.requires_grad_(False)
        vgg.requires_grad_(False)

        def g_forward() -> None:
            with torch.no_grad():
                g.synthesis(ws)

        def projection_step() -> None:  # latents only: the weights are fixed
            w = ws.clone().requires_grad_(True)
            vgg(F.avg_pool2d(g.synthesis(w), 4)).square().mean().backward()

        def adaptation_step() -> None:  # weight gradients too
            g.synthesis.requires_grad_(True)
            vgg(F.avg_pool2d(g.synthesis(ws), 4)).square().mean().backward()
            g.synthesis.requires_grad_(False)

        def training_image() -> None:  # G step through D, D step on a fake and a real (no R1)
            g.requires_grad_(True)
            z = torch.zeros(1, 512, device="meta")
            F.softplus(-d(g(z, None), None)).mean().backward()
            g.requires_grad_(False)
            d.requires_grad_(True)
            fake = torch.zeros(1, 3, 1024, 1024, device="meta")
            (F.softplus(d(fake, None)) + F.softplus(-d(fake, None))).mean().backward()
            d.requires_grad_(False)

        counts = {name: flops(fn) / 1e9 for name, fn in [
            ("g_forward", g_forward), ("projection_step", projection_step), ("adaptation_step", adaptation_step),
            ("training_image", training_image)]}
    p, a = DEFAULTS.projection.steps, DEFAULTS.adaptation.steps
    counts["scored_image"] = p * counts["projection_step"] + a * counts["adaptation_step"] + 2 * counts["g_forward"]
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="fixture", help="generator: " + ", ".join([*bench_networks.CONFIGS, *SMALL]))
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--projection-steps", type=int, default=10)
    ap.add_argument("--adaptation-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine.describe())
    bench_networks.CONFIGS.update(SMALL)
    g, _ = bench_networks.build(args.config)
    images = targets(g, args.images)
    steps = args.projection_steps + args.adaptation_steps
    print(f"\n== measured: {args.config} ({g.img_resolution}x{g.img_resolution}), {args.images} images, "
          f"{args.projection_steps} projection + {args.adaptation_steps} adaptation steps")
    batched = measure(g, images, args.batch, args)
    single = measure(g, images, 1, args)
    full = DEFAULTS.projection.steps + DEFAULTS.adaptation.steps
    for name, s in ((f"batch {args.batch}", batched), ("one at a time", single)):
        print(f"   {name:14s} {args.images / s:7.3f} img/s   {s / args.images:7.2f} s/img   "
              f"~{s / args.images * full / steps:7.1f} s/img at the default {full} steps (linear in steps)")
    print(f"   batched / one at a time: {single / batched:.2f}x "
          "(projection is batched; adaptation tunes each image's own weights, one at a time)")

    c = gpu_estimate()
    ratio = c["scored_image"] / c["training_image"]
    a100_s = ratio * A100_S_PER_TRAINING_IMAGE
    print("\n== worked out: 1024x1024 (StyleGAN3-T config, default options), GFLOPs per image")
    print(f"   generator forward {c['g_forward']:.0f}; projection step (G + LPIPS at 256, fwd + bwd) "
          f"{c['projection_step']:.0f}; adaptation step {c['adaptation_step']:.0f}")
    print(f"   one scored image ({DEFAULTS.projection.steps} + {DEFAULTS.adaptation.steps} steps): "
          f"{c['scored_image'] / 1e3:.0f} TFLOPs = {ratio:.0f} training images' worth "
          f"({c['training_image']:.0f} GFLOPs each)")
    print(f"   => about {a100_s:.0f} A100-seconds per image, {a100_s * 1000 / 3600:.1f} A100-hours per 1,000 "
          f"images; a 514-image real set {a100_s * 514 / 3600:.1f} h")
    print("   assumptions: the scorer reaches the same share of the GPU as T-1024 training at batch 32 (batch 8 "
          "projection at 1024 keeps a GPU busy; one-image adaptation less so); training counted without R1 and "
          "ADA (its real cost is higher, so this estimate errs high); FP32 without TF32 plus the network's FP16 "
          "layers, as the reference trains; counts from the plain ops (the fast ops do the same convolutions "
          "with separable filters); the mean-w mapping pass (once per job) and image decoding are left out")
    print(f"   per 1,000 images at 10 x fewer steps ({DEFAULTS.projection.steps // 10} + "
          f"{DEFAULTS.adaptation.steps // 10}): ~{a100_s * 100 / 3600:.1f} A100-hours (cost is linear in steps)")


if __name__ == "__main__":
    main()

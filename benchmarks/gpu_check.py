"""One-shot GPU check (about 5-8 minutes on one H100/H200): correctness, speed and memory at 1024.

    .venv/bin/python benchmarks/gpu_check.py [--reference DIR] [--quick]

Prints, in one run on the first visible GPU:
1. each op's largest absolute difference between the memory-lean autograd path and autograd
   over the composite ops, forward and input gradients, in float32, float16 and bfloat16, on
   the shapes StyleGAN3-T/R use (up 2/4, down 2, separable and radial filters, clamp);
2. G forward images/s at 1024 (StyleGAN3-T, batch 8, the recipe's mixed precision: float16
   in the 4 highest resolutions), lean and composite;
3. training s/kimg at 1024 with batch per GPU 4 and 8 (G and D steps, lazy R1, ADA bgc at
   p = 0.2), lean and composite, with the peak GPU memory of each;
4. with ``--reference DIR`` (a checkout of NVlabs/stylegan3 kept outside this repository),
   the reference's s/kimg and peak memory on the same GPU, its compiled kernels included,
   and our figures as ratios to it (goal: s/kimg at most 0.8x the reference's, peak memory
   at most the reference's).
Every figure names the GPU it came from. Exit status 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import sys
import time

import machine  # benchmarks/machine.py, beside this script
import torch
from bench_train import reference_seconds_per_kimg, seconds_per_kimg

from cleftgan_hpc.model import Generator, ops
from cleftgan_hpc.model.filters import design_lowpass_filter

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}  # of values ~1; grads relative


def check_ops(dev: torch.device) -> bool:
    ok = True
    cases = [  # up taps, up, down taps, down, radial, padding, size, clamp
        (12, 2, 12, 2, False, (9, 8, 9, 8), 36, 256.0),
        (24, 4, 12, 2, False, (-6, -9, -6, -9), 52, 256.0),
        (12, 2, 12, 2, True, (9, 8, 9, 8), 36, 256.0),
        (12, 2, 12, 2, False, (-11, -12, -11, -12), 84, None),
    ]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for ut, up, dt, down, radial, padding, size, clamp in cases:
            fu = design_lowpass_filter(ut, cutoff=3.0, width=4.0, fs=16.0).to(dev)
            fd = design_lowpass_filter(dt, cutoff=3.0, width=4.0, fs=16.0, radial=radial).to(dev)
            x = (torch.randn(4, 64, size, size, device=dev) * 2).to(dtype)
            b = torch.randn(64, device=dev).to(dtype)
            results = []
            for lean in (True, False):
                xs, bs = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
                with ops.lean_autograd(lean):
                    y = ops.filtered_lrelu(xs, fu, fd, bs, up=up, down=down, padding=padding, clamp=clamp)
                gx, gb = torch.autograd.grad(y.float().square().sum() / y.numel(), [xs, bs])
                results.append((y.float(), gx.float(), gb.float()))
            errs = [(a - c).abs().max().item() / max(c.abs().max().item(), 1e-6) for a, c in zip(*results, strict=True)]
            good = max(errs) <= TOLERANCE[dtype]
            ok &= good
            print(f"  filtered_lrelu {str(dtype)[6:]:8s} up {up} down {down} {'radial' if radial else 'separable'} "
                  f"clamp {clamp}: relative max error value {errs[0]:.1e}, grad x {errs[1]:.1e}, grad b {errs[2]:.1e} "
                  f"{'ok' if good else 'FAILED'}")
    return ok


def g_forward(dev: torch.device, batch: int) -> tuple[float, float]:
    torch.manual_seed(0)
    g = Generator(512, 0, 512, 1024, 3, channel_base=32768, channel_max=512, num_fp16_res=4).to(dev).eval()
    z = torch.randn(batch, 512, device=dev)
    with torch.no_grad():
        g(z, None)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(5):
            g(z, None)
        torch.cuda.synchronize(dev)
    return 5 * batch / (time.perf_counter() - t0), torch.cuda.max_memory_allocated(dev) / 2**30


def training(dev: torch.device, batch: int, steps: int, lean: bool) -> tuple[float, float]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    with ops.lean_autograd(lean):
        s = seconds_per_kimg(1024, batch, steps, 0.2, dev)
    return s, torch.cuda.max_memory_allocated(dev) / 2**30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", metavar="DIR")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible", file=sys.stderr)
        return 2
    dev = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(dev)
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}; host {machine.cpu_name()}")
    print("1. lean path vs composite ops")
    ok = check_ops(dev)
    print(f"2. G forward at 1024 (T, mixed precision) on {name}")
    ips, mem = g_forward(dev, 8)
    print(f"  batch 8: {ips:.1f} img/s, peak {mem:.1f} GiB")
    steps = 4 if a.quick else 16
    ref = machine.reference(a.reference) if a.reference else None
    print(f"3. training at 1024, ADA bgc p 0.2, {steps} steps (one R1) on {name}")
    for batch in (4, 8):
        rows = {"lean": training(dev, batch, steps, True), "composite": training(dev, batch, steps, False)}
        if ref is not None:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            rows["reference"] = (reference_seconds_per_kimg(ref, 1024, batch, steps, 0.2, dev),
                                 torch.cuda.max_memory_allocated(dev) / 2**30)
        for label, (s, m) in rows.items():
            vs = ""
            if "reference" in rows and label != "reference":
                rs, rm = rows["reference"]
                vs = f"  ({s / rs:.2f}x the reference's s/kimg, goal <= 0.8; {m / rm:.2f}x its memory, goal <= 1)"
            print(f"  batch {batch} {label:9s}: {s:8.1f} s/kimg, peak {m:5.1f} GiB{vs}")
    print("gpu_check:", "all correctness checks passed" if ok else "a correctness check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

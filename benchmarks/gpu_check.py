"""One-shot GPU check (about 5-8 minutes on one H100/H200): correctness, speed and memory at 1024.

    .venv/bin/python benchmarks/gpu_check.py [--reference DIR] [--quick] [--ops-only]

Prints, in one run on the first visible GPU:
1. the Triton kernels of the filtered leaky ReLU (cleftgan_hpc/model/ops/compiled.py): each
   configuration's max abs error against the PyTorch ops (autograd over the composite ops),
   forward and input/bias gradients, in float32, float16 and bfloat16, on the shapes
   StyleGAN3-T/R use (up 2/4, down 1/2, separable and radial filters, clamp), with whether the
   kernels ran (or why not: their self-check's verdict); and the same for the memory-lean
   PyTorch path;
2. G forward images/s at 1024 (StyleGAN3-T, batch 8, the recipe's mixed precision: float16
   in the 4 highest resolutions) with the Triton kernels and with the PyTorch ops;
3. training s/kimg at 1024 with batch per GPU 4 and 8 (G and D steps, lazy R1, ADA bgc at
   p = 0.2): Triton kernels, PyTorch lean ops, composite ops, with the peak GPU memory of each;
4. with ``--reference DIR`` (a checkout of NVlabs/stylegan3 kept outside this repository),
   the reference's s/kimg and peak memory on the same GPU, its compiled kernels included,
   and our figures as ratios to it (goal: s/kimg at most 0.8x the reference's, peak memory
   at most the reference's).
Every figure names the GPU it came from. Exit status 1 when a correctness check fails, 2
without a GPU. ``--ops-only`` stops after part 1.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator

import machine  # benchmarks/machine.py, beside this script
import torch
from bench_train import reference_seconds_per_kimg, seconds_per_kimg

from cleftgan_hpc.model import Generator, ops
from cleftgan_hpc.model.filters import design_lowpass_filter
from cleftgan_hpc.model.ops import compiled

# largest error / largest value of the composite result (values ~1; gradients relative)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CASES = [  # up taps, up, down taps, down, radial, padding, size, clamp
    (12, 2, 12, 2, False, (9, 8, 9, 8), 36, 256.0),
    (24, 4, 12, 2, False, (-6, -9, -6, -9), 52, 256.0),
    (12, 2, 12, 2, True, (9, 8, 9, 8), 36, 256.0),
    (12, 2, 12, 2, False, (-11, -12, -11, -12), 84, None),
    (12, 2, 12, 1, False, (9, 8, 9, 8), 36, 256.0),
]
PATHS = {  # label -> (Triton kernels allowed, lean autograd)
    "triton": (True, None),
    "pytorch-lean": (False, True),
    "composite": (False, False),
}


@contextlib.contextmanager
def path(label: str) -> Iterator[None]:
    kernels, lean = PATHS[label]
    with compiled.compiled_kernels(kernels), ops.lean_autograd(lean):
        yield


def _op(label: str, x, b, fu, fd, up, down, padding, clamp):  # noqa: ANN001, ANN202
    xs, bs = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
    with path(label):
        y = ops.filtered_lrelu(xs, fu, fd, bs, up=up, down=down, padding=padding, clamp=clamp)
    kernel = "Compiled" in type(y.grad_fn).__name__
    gx, gb = torch.autograd.grad(y.float().square().sum() / y.numel(), [xs, bs])
    return (y.float(), gx.float(), gb.float()), kernel


def check_ops(dev: torch.device, scale: float = 2.0, batch: int = 4, channels: int = 64) -> bool:
    ok = True
    for dtype in DTYPES:
        for ut, up, dt, down, radial, padding, size, clamp in CASES:
            fu = design_lowpass_filter(ut, cutoff=3.0, width=4.0, fs=16.0).to(dev)
            fd = design_lowpass_filter(dt, cutoff=3.0, width=4.0, fs=16.0, radial=radial).to(dev)
            x = (torch.randn(batch, channels, size, size, device=dev) * scale).to(dtype)
            b = torch.randn(channels, device=dev).to(dtype)
            want, _ = _op("composite", x, b, fu, fd, up, down, padding, clamp)
            name = (f"up {up} down {down} {'radial' if radial else 'separable'} clamp {clamp} "
                    f"{str(dtype)[6:]:8s}")
            for label in ("triton", "pytorch-lean"):
                got, kernel = _op(label, x, b, fu, fd, up, down, padding, clamp)
                abs_err = [(a - c).abs().max().item() for a, c in zip(got, want, strict=True)]
                rel = [e / max(c.abs().max().item(), 1e-6) for e, c in zip(abs_err, want, strict=True)]
                good = max(rel) <= TOLERANCE[dtype]
                ok &= good
                ran = "" if label != "triton" else (" [kernels ran]" if kernel else
                                                    f" [kernels NOT used: {compiled.status(dev)}]")
                print(f"  {label:12s} {name}: max abs error value {abs_err[0]:.1e}, grad x {abs_err[1]:.1e}, "
                      f"grad b {abs_err[2]:.1e} (relative {max(rel):.1e}) {'ok' if good else 'FAILED'}{ran}")
    return ok


def g_forward(dev: torch.device, batch: int, label: str) -> tuple[float, float]:
    torch.manual_seed(0)
    g = Generator(512, 0, 512, 1024, 3, channel_base=32768, channel_max=512, num_fp16_res=4).to(dev).eval()
    z = torch.randn(batch, 512, device=dev)
    torch.cuda.empty_cache()
    with torch.no_grad(), path(label):
        g(z, None)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(5):
            g(z, None)
        torch.cuda.synchronize(dev)
    return 5 * batch / (time.perf_counter() - t0), torch.cuda.max_memory_allocated(dev) / 2**30


def training(dev: torch.device, batch: int, steps: int, label: str) -> tuple[float, float]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    with path(label):
        s = seconds_per_kimg(1024, batch, steps, 0.2, dev)
    return s, torch.cuda.max_memory_allocated(dev) / 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", metavar="DIR", help="a checkout of NVlabs/stylegan3 (outside this repository)")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    ap.add_argument("--ops-only", action="store_true", help="only part 1: the kernels against the PyTorch ops")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help=f"the paths timed in parts 2 and 3, comma-separated (default: all of {', '.join(PATHS)})")
    a = ap.parse_args(argv)
    a.paths = [p.strip() for p in a.paths.split(",") if p.strip()]
    unknown = [p for p in a.paths if p not in PATHS]
    if unknown or not a.paths:
        ap.error(f"--paths: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PATHS)}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible", file=sys.stderr)
        return 2
    dev = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(dev)
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}; host {machine.cpu_name()}")
    t0 = time.perf_counter()
    kernels = compiled.check_device(dev)  # compiles (or reads the cache) and self-checks every T/R configuration
    print(f"Triton kernels: {kernels} ({time.perf_counter() - t0:.1f} s)")
    print("1. filtered_lrelu: Triton kernels and the lean PyTorch path vs the composite PyTorch ops")
    ok = check_ops(dev)
    if a.ops_only:
        print("gpu_check:", "all correctness checks passed" if ok else "a correctness check FAILED")
        return 0 if ok else 1
    print(f"2. G forward at 1024 (T, mixed precision, batch 8) on {name}")
    for label in a.paths:
        if label == "composite":
            continue  # no autograd in a forward: the same as pytorch-lean
        ips, mem = g_forward(dev, 8, label)
        print(f"  {label:12s}: {ips:.1f} img/s, peak {mem:.1f} GiB")
    steps = 4 if a.quick else 16
    ref = machine.reference(a.reference) if a.reference else None
    print(f"3. training at 1024, ADA bgc p 0.2, {steps} steps (one R1) on {name}")
    for batch in (4, 8):
        rows = {label: training(dev, batch, steps, label) for label in a.paths}
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
            print(f"  batch {batch} {label:12s}: {s:8.1f} s/kimg, peak {m:5.1f} GiB{vs}")
    print("gpu_check:", "all correctness checks passed" if ok else "a correctness check FAILED")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())

"""Speed of our StyleGAN3 networks on this machine: fast ops vs the plain (reference-style) ops.

    .venv/bin/python benchmarks/bench_networks.py [--configs fixture,256] [--batch 8] [--repeats 3]

For each configuration: generator forward images/s at the given batch, and full training
steps/s (G forward/backward through D, D forward/backward on reals and fakes, with the R1
penalty, i.e. double backward through D), each with the fast ops and with the plain ops in
the same run. GFLOP/s counts the convolution/matmul FLOPs of the fast path (torch's
FlopCounterMode), so both columns divide the same useful work by their time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import machine  # benchmarks/machine.py, beside this script
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cleftgan_hpc.model import Discriminator, Generator, ops

CONFIGS: dict[str, dict] = {
    # The parity fixture's configuration (64x64).
    "fixture": dict(z_dim=64, w_dim=64, img_resolution=64, channel_base=2048, channel_max=64),
    # A 256x256 configuration.
    "256": dict(z_dim=128, w_dim=128, img_resolution=256, channel_base=8192, channel_max=128),
}


def build(name: str) -> tuple[Generator, Discriminator]:
    cfg = dict(CONFIGS[name])
    torch.manual_seed(0)
    g = Generator(c_dim=0, img_channels=3, **cfg)
    d = Discriminator(
        c_dim=0, img_resolution=cfg["img_resolution"], img_channels=3, channel_base=cfg["channel_base"],
        channel_max=cfg["channel_max"],
    )  # fmt: skip
    return g, d


def timed(fn: Callable[[], object], repeats: int, min_seconds: float = 3.0, max_repeats: int = 50) -> float:
    """Best seconds of fn() over at least `repeats` calls and `min_seconds` (after one warm-up call).

    The best, not the mean: on a shared machine, other processes only ever add time.
    """
    fn()
    best, total, count = float("inf"), 0.0, 0
    while count < repeats or (total < min_seconds and count < max_repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, count = min(best, dt), total + dt, count + 1
    return best


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train_step(g: Generator, d: Discriminator, batch: int) -> None:
    """One G step and one D step with R1 (non-saturating logistic loss), gradients only (no optimiser)."""
    z = torch.randn(batch, g.z_dim)
    g.zero_grad(set_to_none=True)
    d.zero_grad(set_to_none=True)
    fake = g(z, None, update_emas=True)
    F.softplus(-d(fake, None)).mean().backward()
    # A non-leaf input (FlopCounterMode's hooks cannot handle autograd.grad w.r.t. a leaf).
    real = torch.randn(batch, 3, g.img_resolution, g.img_resolution).requires_grad_(True) * 1.0
    logits_fake = d(fake.detach(), None)
    logits_real = d(real, None)
    (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
    r1 = grad.square().sum(dim=[1, 2, 3]).mean() * (1.0 / 2)
    (F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean() + r1).backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="fixture,256", help="comma-separated: " + ",".join(CONFIGS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--train-configs",
        default="fixture",
        help="configs whose training step is measured ('' for none; the plain ops' training step at 256 "
        "needs more memory than these machines have)",
    )
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-ops measurements (slow)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--reference", metavar="DIR", help="a checkout of the reference (NVlabs/stylegan3), timed "
                    "side by side in this run (kept outside this repository)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.ref = machine.reference(args.reference) if args.reference else None
    print(f"{machine.describe()}, batch {args.batch}")
    args.peak = machine.sgemm_peak()
    print(f"sgemm peak measured now: {args.peak:.0f} GFLOP/s (every rate below is also shown as a share of it)")
    for name in args.configs.split(","):
        bench_config(name, args)


def report(
    what: str, work_flops: int, fast_s: float, plain_s: float, per_call: int, unit: str, ref_s: float | None,
    peak: float,
) -> None:
    """One result line: rates, GFLOP/s of the same work (and their share of the sgemm peak),
    and the ratios to the plain ops and to the reference, all measured in this run."""

    def rate(s: float) -> str:
        gflops = work_flops / s / 1e9
        return f"{per_call / s:8.2f} {unit} ({gflops:6.1f} GFLOP/s, {100 * gflops / peak:4.1f}% of peak)"

    line = f"   {what:10s}  fast {rate(fast_s)} | plain {rate(plain_s)} | fast/plain {plain_s / fast_s:5.1f}x"
    if ref_s is not None:
        line += f" | reference {rate(ref_s)} | fast/reference {ref_s / fast_s:5.1f}x"
    print(line, flush=True)


def bench_config(name: str, args: argparse.Namespace) -> None:
    """Measure and print one configuration."""
    g, d = build(name)
    g.eval()
    z = torch.randn(args.batch, g.z_dim)
    print(f"\n== {name}: {CONFIGS[name]}")
    print(f"   G {sum(p.numel() for p in g.parameters()) / 1e6:.2f}M params, "
          f"D {sum(p.numel() for p in d.parameters()) / 1e6:.2f}M params")  # fmt: skip

    def forward() -> None:
        with torch.no_grad():
            g(z, None)

    flops = count_flops(forward)
    print(f"   G forward: {flops / args.batch / 1e9:.2f} GFLOP/img (conv + matmul)", flush=True)
    fast = timed(forward, args.repeats)
    plain = float("nan")
    if not args.no_plain:
        with ops.plain_ops():
            plain = timed(forward, max(1, args.repeats - 1))
    ref_s = None
    if args.ref is not None:
        torch.manual_seed(0)
        rg = args.ref.sg3.Generator(c_dim=0, img_channels=3, **CONFIGS[name]).eval()

        def ref_forward() -> None:
            with torch.no_grad():
                rg(z, None)

        ref_s = timed(ref_forward, max(1, args.repeats - 1))
    report("G forward", flops, fast, plain, args.batch, "img/s", ref_s, args.peak)
    if name not in args.train_configs.split(","):
        return
    g.train(), d.train()
    flops = count_flops(lambda: train_step(g, d, args.batch))
    print(f"   train step: {flops / 1e9:.1f} GFLOP (conv + matmul)", flush=True)
    fast = timed(lambda: train_step(g, d, args.batch), max(1, args.repeats - 1))
    plain = float("nan")
    if not args.no_plain:
        with ops.plain_ops():
            plain = timed(lambda: train_step(g, d, args.batch), 1)
    report("train step", flops, fast, plain, 1, "steps/s", None, args.peak)


if __name__ == "__main__":
    main()

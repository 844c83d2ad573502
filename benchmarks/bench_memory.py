"""Memory of training at 1024x1024: the lean autograd path vs today's composite ops vs plain ops.

    .venv/bin/python benchmarks/bench_memory.py [--res 1024] [--modes lean,composite,plain]
                                                [--what saved,step] [--threads 2]

For each mode, in a fresh process of its own (so one mode's peak cannot hide another's):
- saved: the bytes autograd keeps for backward after a grad-enabled G forward of one image
  (every tensor packed by ``saved_tensors_hooks``, each storage counted once), and the time of
  that forward plus its backward;
- step: the peak resident memory of one full training step at batch 1 (G forward/backward
  through D, D on reals and fakes, the R1 penalty with its double backward through D) above
  the process's memory before the step, and the step's time.

Modes: ``lean`` (the default path: ops/lean.py), ``composite`` (autograd over the same fast
ops, as before the lean path), ``plain`` (the reference-style ops). Figures are printed with
the CPU they ran on and as ratios to ``composite`` measured in the same run. The StyleGAN3-T
configuration at 1024: z = w = 512, channel_base 32768, channel_max 512 (22.3M parameters).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from machine import cpu_name  # benchmarks/machine.py, beside this script

from cleftgan_hpc.model import Discriminator, Generator, ops

MIB = 2**20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mode_context(mode: str) -> contextlib.AbstractContextManager:
    if mode == "plain":
        return ops.plain_ops()
    return ops.lean_autograd(mode == "lean")


def networks(res: int) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    g = Generator(512, 0, 512, res, 3, channel_base=32768, channel_max=512)
    d = Discriminator(0, res, 3, channel_base=32768, channel_max=512)
    return g.train(), d.train()


def measure_saved(res: int, mode: str) -> dict:
    g, _ = networks(res)
    z = torch.randn(1, 512)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with mode_context(mode):
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            img = g(z, None)
        t_fwd = time.perf_counter() - t0
        params = {p.untyped_storage().data_ptr() for p in g.parameters()}
        saved = sum(n for ptr, n in seen.items() if ptr not in params)  # weights are not activations
        t1 = time.perf_counter()
        img.square().mean().backward()
        t_bwd = time.perf_counter() - t1
    return {"saved_mib": saved / MIB, "forward_s": t_fwd, "backward_s": t_bwd}


def measure_step(res: int, mode: str) -> dict:
    g, d = networks(res)
    before = rss_bytes()
    with mode_context(mode):
        t0 = time.perf_counter()
        z = torch.randn(1, 512)
        fake = g(z, None, update_emas=True)
        F.softplus(-d(fake, None)).mean().backward()
        real = torch.randn(1, 3, res, res).requires_grad_(True)
        logits_fake = d(fake.detach(), None)
        logits_real = d(real, None)
        (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
        r1 = grad.square().sum(dim=[1, 2, 3]).mean() * 0.5
        (F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean() + r1).backward()
        took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_mib": (peak - before) / MIB, "step_s": took}


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    fn = measure_saved if args.child_what == "saved" else measure_step
    print(json.dumps(fn(args.res, args.child_mode)))


def run_child(res: int, mode: str, what: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--res", str(res), "--threads", str(threads),
           "--child-mode", mode, "--child-what", what]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": "killed (out of memory?)" if out.returncode < 0 else last}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--modes", default="lean,composite,plain")
    ap.add_argument("--what", default="saved,step", help="saved, step or both")
    ap.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--child-mode", help=argparse.SUPPRESS)
    ap.add_argument("--child-what", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_mode:
        child(args)
        return
    modes = args.modes.split(",")
    print(f"StyleGAN3-T at {args.res}x{args.res}, batch 1, float32, {args.threads} threads, {cpu_name()}")
    for what in args.what.split(","):
        results = {m: run_child(args.res, m, what, args.threads) for m in modes}
        base = results.get("composite", {})
        for m, r in results.items():
            if "error" in r:
                print(f"  {what:5s} {m:9s} failed: {r['error']}")
                continue
            if what == "saved":
                total = r["forward_s"] + r["backward_s"]
                ratio = (f"  ({r['saved_mib'] / base['saved_mib']:.2f}x memory, "
                         f"{total / (base['forward_s'] + base['backward_s']):.2f}x time of composite)"
                         if "saved_mib" in base else "")
                print(f"  saved {m:9s} {r['saved_mib']:9,.0f} MiB per image   forward {r['forward_s']:6.1f} s  "
                      f"backward {r['backward_s']:6.1f} s{ratio}")
            else:
                ratio = (f"  ({r['peak_mib'] / base['peak_mib']:.2f}x memory, {r['step_s'] / base['step_s']:.2f}x "
                         "time of composite)" if "peak_mib" in base else "")
                print(f"  step  {m:9s} {r['peak_mib']:9,.0f} MiB peak above start   step {r['step_s']:6.1f} s{ratio}")


if __name__ == "__main__":
    main()

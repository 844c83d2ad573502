"""Speed of our StyleGAN2 generator against the reference implementation's CPU path, same process.

    .venv/bin/python benchmarks/bench_stylegan2.py --reference PATH/TO/stylegan3 [--batch 1,8,32] [--threads 2]

Both generators run the StyleGAN2 parity fixture's network (tests/fixtures/stylegan2/sg2_64:
64x64, z = w = 64, 2 mapping layers, channel_base 2048, channel_max 64) with the same weights
(ours loaded from the pickle, the reference's constructed from its own source and given our
state dict), float32, `noise_mode="const"`, truncation 1, under `torch.no_grad()`. On CPU the
reference's custom ops fall back to its own plain PyTorch implementations, which is what it
runs here. The reference is imported from a checkout of NVlabs/stylegan3
(training/networks_stylegan2.py) or NVlabs/stylegan2-ada-pytorch (training/networks.py) given
with --reference; it is never copied into this repository. Timings are interleaved (reference,
ours, plain-ops ours, in turn) and the best of each is kept: on a shared machine other work only
ever adds time. "convolutions only" times the network's convolutions alone, same shapes: the
most any float32 implementation doing the same multiplications could reach here.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cleftgan_hpc.model import load_network, ops

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "stylegan2" / "sg2_64" / "network.pkl"


def cpu_name() -> str:
    """The CPU's model name, as the kernel reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reference_generator_class(checkout: Path) -> type:
    """The reference's StyleGAN2 Generator class, imported from its checkout."""
    sys.path.insert(0, str(checkout))
    try:
        import pkg_resources  # noqa: F401  (the reference's conv2d_gradfix imports it)
    except ImportError:  # setuptools >= 81 has none; the reference only wants parse_version
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)  # type: ignore[assignment]
    for name in ("training.networks_stylegan2", "training.networks"):
        try:
            return importlib.import_module(name).Generator
        except ModuleNotFoundError:
            continue
    raise SystemExit(f"--reference {checkout}: no training/networks_stylegan2.py or training/networks.py there")


def reference_kwargs(g: torch.nn.Module, module_name: str) -> dict:
    """Our generator's constructor arguments as the reference's Generator takes them."""
    kw = {k: v for k, v in g.init_kwargs.items() if k not in ("low_precision_dtype", "channels_last")}
    if module_name == "training.networks":  # StyleGAN2-ADA: synthesis arguments as one dict
        top = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")
        kw = {**{k: kw[k] for k in top}, "synthesis_kwargs": {k: v for k, v in kw.items() if k not in top}}
    return kw


def convolutions_only(g: torch.nn.Module, batch: int) -> Callable[[], object]:
    """The generator's 3x3 convolutions alone (the upsampling ones as stride-2 transposed
    convolutions), float32, channels-last, on random data: a bound no implementation of this
    network can beat on this machine without doing fewer multiplications."""
    fmt, calls = torch.channels_last, []
    for block in g.synthesis.blocks():
        for layer in block.layers():
            res_in = layer.resolution // layer.up
            x = torch.randn(batch, layer.in_channels, res_in, res_in).contiguous(memory_format=fmt)
            w = layer.weight.detach()
            if layer.up == 2:
                calls.append(functools.partial(F.conv_transpose2d, x, w.transpose(0, 1).contiguous(), stride=2))
            else:
                calls.append(functools.partial(F.conv2d, x, w, padding=layer.padding))
    return lambda: [c() for c in calls]


def best_times(fns: dict[str, Callable[[], object]], repeats: int, min_seconds: float) -> dict[str, float]:
    """Best seconds per call of each function, interleaved, after one warm-up call each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    total, count = 0.0, 0
    while count < repeats or total < min_seconds:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            best[name] = min(best[name], dt)
            total += dt
        count += 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, help="checkout of NVlabs/stylegan3 or NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--batch", default="8", help="comma-separated batch sizes (default 8)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls of each, at least (default 10)")
    ap.add_argument("--min-seconds", type=float, default=5.0, help="and at least this long per batch size")
    ap.add_argument("--no-plain", action="store_true", help="skip our plain-ops path")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = load_network(FIXTURE).G_ema
    ref = None
    if args.reference is not None:
        cls = reference_generator_class(args.reference)
        ref = cls(**reference_kwargs(g, cls.__module__)).eval().requires_grad_(False)
        ref.load_state_dict(g.state_dict())  # the same names: the weights of the fixture
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}")
    print(f"network: {FIXTURE.relative_to(FIXTURE.parents[4])} ({sum(p.numel() for p in g.parameters()):,} params)")
    if ref is None:
        print("no --reference: timing ours only")
    for batch in [int(b) for b in args.batch.split(",")]:
        bench_batch(g, ref, batch, args)


def bench_batch(g: torch.nn.Module, ref: torch.nn.Module | None, batch: int, args: argparse.Namespace) -> None:
    """Time one batch size and print its line."""
    z = torch.from_numpy(np.random.RandomState(batch).randn(batch, g.z_dim)).float()
    fns: dict[str, Callable[[], object]] = {}
    if ref is not None:
        fns["reference"] = lambda: ref(z, None, noise_mode="const")
    fns["ours"] = lambda: g(z, None, noise_mode="const")
    if not args.no_plain:
        fns["ours, plain ops"] = lambda: _plain(g, z)
    fns["convolutions only"] = convolutions_only(g, batch)
    with torch.no_grad():
        diff = (fns["ours"]() - fns["reference"]()).abs().max().item() if ref is not None else 0.0
        best = best_times(fns, args.repeats, args.min_seconds)
    line = f"batch {batch:3d}: " + " | ".join(f"{k} {batch / v:7.1f} img/s" for k, v in best.items())
    if ref is not None:
        line += f" | ours / reference {best['reference'] / best['ours']:.2f}x (max |diff| {diff:.1e})"
        line += f" | convolutions only / reference {best['reference'] / best['convolutions only']:.2f}x"
    print(line, flush=True)


def _plain(g: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    with ops.plain_ops():
        return g(z, None, noise_mode="const")


if __name__ == "__main__":
    main()

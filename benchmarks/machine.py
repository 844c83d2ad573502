"""What every benchmark says about the machine it ran on, measured in the same run.

- ``describe()``: the CPU model, threads, torch version and the load average;
- ``sgemm_peak()``: this machine's float32 matrix-multiply rate now (GFLOP/s), the ceiling for
  any convolution network on the CPU, so rates can be printed as a share of it;
- ``reference(dir)``: the reference implementation's modules from a checkout outside the
  repository (``--reference DIR``), to time it side by side in the same run. It is imported,
  never copied: its own loader runs its own code, which is fine for a checkout the user chose.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import types
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"load average {load:.1f}")


def sgemm_peak(n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of float32 n x n matrix products on the current threads (best of a few seconds)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b, out=out)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def reference(checkout: str | Path) -> types.SimpleNamespace:
    """The reference's network and training modules from a checkout (NVlabs/stylegan3)."""
    root = Path(checkout).resolve()
    if not (root / "training" / "networks_stylegan3.py").is_file():
        raise SystemExit(f"--reference {root}: not a checkout of the reference (no training/networks_stylegan3.py)")
    sys.path.insert(0, str(root))
    if "pkg_resources" not in sys.modules:  # the reference asks setuptools for parse_version only
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)  # type: ignore[assignment]
    import dnnlib  # noqa: F401  (the reference's own helpers, needed by its modules)
    from training import augment, loss, networks_stylegan2, networks_stylegan3

    return types.SimpleNamespace(
        root=root, sg3=networks_stylegan3, sg2=networks_stylegan2, loss=loss, augment=augment,
    )

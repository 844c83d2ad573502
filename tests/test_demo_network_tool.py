"""tools/demo_network.py (`make demo-network`) end to end at a toy size: faces without a notch,
the autoencoder warm start in two phases, the mapping fit, the (optional) GAN step through the finetune stage, the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from cleftgan_hpc.model import StyleGAN2Generator, load_network

REPO = Path(__file__).resolve().parents[1]


def test_makes_a_network_the_demo_can_fine_tune_from(tmp_path: Path) -> None:
    out = tmp_path / "normal.safetensors"
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo_network.py"), "--work", str(tmp_path / "work"), "--out", str(out),
         "--count", "40", "--plain-steps", "3", "--detail-steps", "2", "--gan-kimg", "0.064", "--batch", "8"],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "faces: 40/40" in run.stdout and "warm start (plain): step 3/3" in run.stdout
    assert "warm start (detail): step 2/2" in run.stdout and "mapping fitted, MMD" in run.stdout
    net = load_network(out)
    assert isinstance(net.G, StyleGAN2Generator) and net.D is not None and net.G_ema is not None
    assert (net.G.img_resolution, net.G.img_channels, net.G.c_dim) == (64, 3, 0)
    warm = load_network(tmp_path / "work" / "warm-start.safetensors")
    assert warm.extra["demo_normal_network"]["faces"] == 40
    # the GAN step trained on from the warm start: same architecture, other weights
    changed = [k for k, v in net.G.state_dict().items() if not torch.equal(v, warm.G.state_dict()[k])]
    assert changed
    # the targets' check reads it and fails it: a network that saw 40 faces for 3 steps finds no notch
    check = subprocess.run(
        [sys.executable, str(REPO / "tools" / "check_demo_network.py"), str(out), "--faces", "12", "--index",
         '{"projection": {"steps": 3, "w_avg_samples": 100}, "adaptation": {"steps": 1}}'],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert "Spearman with the drawn severity:" in check.stdout and "peaking in the lip region" in check.stdout

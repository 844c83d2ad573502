"""Shared fixtures: the StyleGAN3 parity fixture shipped with the tests (tests/fixtures/PROVENANCE.md).

`network.pkl` and `meta.json` are copies of the upstream fixture; `reference_small.npz` is the
upstream `reference.npz` with the per-layer outputs cut to one window (make_small_reference.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE_DIR = Path(__file__).parents[1] / "fixtures" / "stylegan3" / "sg3t_64"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def reference(fixture_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixture_dir / "reference_small.npz", allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="session")
def fixture_network(fixture_dir: Path):  # -> Network
    from cleftgan_hpc.model import load_network

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_network(fixture_dir / "network.pkl")

"""Shared fixtures: the StyleGAN3 parity fixture (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE_DIR = Path(__file__).parents[2].parent / "shared" / "fixtures" / "stylegan3" / "sg3t_64"


def _require_fixture() -> Path:
    if not (FIXTURE_DIR / "network.pkl").is_file() or not (FIXTURE_DIR / "reference.npz").is_file():
        pytest.skip(f"StyleGAN3 parity fixture not found at {FIXTURE_DIR} (it lives in the shared checkout)")
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return _require_fixture()


@pytest.fixture(scope="session")
def reference(fixture_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixture_dir / "reference.npz") as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="session")
def fixture_network(fixture_dir: Path):  # -> Network
    from cleftgan_hpc.model import load_network

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_network(fixture_dir / "network.pkl")

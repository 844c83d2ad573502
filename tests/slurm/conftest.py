"""The Slurm tests run against a real single-node cluster (slurm/testcluster/up.sh), started
once per session. They need root (packages, daemons); elsewhere they skip and say why."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UP = REPO / "slurm" / "testcluster" / "up.sh"
STATE = Path(os.environ.get("CLEFTGAN_SLURM_DIR", "/tmp/cleftgan-slurm"))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """SLURM_CONF of a running test cluster (started here if it is not up)."""
    if os.geteuid() != 0:
        pytest.skip("Slurm tests need root to install and start the test cluster (slurm/testcluster/up.sh)")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(UP), "--env"], capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"slurm/testcluster/up.sh failed:\n{proc.stderr[-4000:]}")
    conf = str(STATE / "etc" / "slurm.conf")
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", conf)
    print(f"\ntest cluster up in {time.monotonic() - t0:.1f}s (SLURM_CONF={conf})")
    yield conf
    mp.undo()

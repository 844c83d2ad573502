"""Snapshot metrics split across data-parallel ranks give the values of one process."""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from tiny_nets import save_tiny_generator

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.data.dataset import Dataset
from cleftgan_hpc.storage.local import LocalStore
from cleftgan_hpc.training.snapshot_metrics import SnapshotMetrics
from cleftgan_hpc.training.trainer import TrainData


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_of(rank: int, world: int, dataset: Path, net: Path, workdir: Path, samples: int) -> dict[str, float]:
    from cleftgan_hpc.synthesis.generate import load_generator

    ds = Dataset(dataset)
    data = TrainData(torch.from_numpy(ds.array("NCHW").copy()), None, False)
    ctx = StageContext(store=LocalStore(workdir / "store"), run_id="r", stage="train",
                       scratch=workdir / "scratch", log=logging.getLogger("test"))
    m = SnapshotMetrics(["fid", "kid"], "demo", dataset, data, samples, 3, ctx, torch.device("cpu"), batch=4,
                        rank=rank, world_size=world)
    return m(load_generator(net))


def _rank(rank: int, world: int, port: int, dataset: str, net: str, workdir: str, samples: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        values = metrics_of(rank, world, Path(dataset), Path(net), Path(workdir), samples)
        (Path(workdir) / f"rank{rank}.json").write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def net32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_generator(tmp_path_factory.mktemp("nets") / "g.safetensors", resolution=32, seed=7)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over TCP on localhost")
def test_two_ranks_give_the_values_of_one_process(tmp_path: Path, tiny_dataset: Path, net32: Path) -> None:
    samples = 19  # odd: the ranks' slices differ in size (10 and 9)
    torch.set_num_threads(1)
    one = metrics_of(0, 1, tiny_dataset, net32, tmp_path / "one", samples)
    (tmp_path / "two").mkdir()
    mp.spawn(_rank, args=(2, free_port(), str(tiny_dataset), str(net32), str(tmp_path / "two"), samples), nprocs=2)
    two = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in range(2)]
    assert two[1] == {}  # rank 1 only generates
    assert set(two[0]) == {"fid", "kid"}
    # the same images, in the same order; only batch boundaries differ (rounding)
    assert two[0]["fid"] == pytest.approx(one["fid"], rel=1e-5)
    assert two[0]["kid"] == pytest.approx(one["kid"], rel=1e-4, abs=1e-7)


def test_gather_rows_on_one_rank_is_the_identity() -> None:
    from cleftgan_hpc.training.distributed import gather_rows

    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert gather_rows(rows, 1) is rows

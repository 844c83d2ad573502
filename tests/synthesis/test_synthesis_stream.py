"""ShardDataset: 2 ranks x 2 DataLoader workers see every sample once per epoch (file:// and S3),
shuffling, decoding, retry; and the `webdataset` library reads our shards as they are."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from cleftgan_hpc.errors import StorageError
from cleftgan_hpc.synthesis.manifest import DatasetError
from cleftgan_hpc.synthesis.stream import ShardDataset


@pytest.fixture
def committed(store: Any, make_cfg: Any, run_synthesis: Any) -> tuple[str, str | None]:
    run_synthesis(make_cfg(count=22, shard_size=3), store)  # 8 shards, the last one of 1
    return store.uri("datasets/toy"), getattr(store, "endpoint_url", None)


def _epoch(url: str, endpoint: str | None, epoch: int, **kw: Any) -> list[list[str]]:
    keys = []
    for rank in range(2):
        ds = ShardDataset(url, rank=rank, world_size=2, endpoint_url=endpoint, decode="raw", **kw)
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        keys.append([s["__key__"] for s in loader])
    return keys


def test_two_ranks_two_workers_each_sample_once(committed: tuple[str, str | None]) -> None:
    url, endpoint = committed
    per_rank = _epoch(url, endpoint, 0)
    everything = per_rank[0] + per_rank[1]
    assert Counter(everything) == Counter(f"{s:010d}" for s in range(22))  # each exactly once
    assert per_rank[0] and per_rank[1]
    shuffled = _epoch(url, endpoint, 1, shuffle=5, seed=3)
    assert sorted(shuffled[0] + shuffled[1]) == sorted(everything)
    assert shuffled != _epoch(url, endpoint, 2, shuffle=5, seed=3)  # a new order every epoch


def test_decoding_and_len(committed: tuple[str, str | None]) -> None:
    url, endpoint = committed
    ds = ShardDataset(url, endpoint_url=endpoint)
    assert len(ds) == 22
    first = next(iter(ds))
    assert first["image"].shape == (3, 16, 16) and first["image"].dtype == torch.uint8
    assert first["json"]["seed"] == 0
    from cleftgan_hpc.synthesis.stream import collate_samples

    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_samples)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(8, 3, 16, 16), (8, 3, 16, 16), (6, 3, 16, 16)]
    assert batches[0]["json"][1]["seed"] == 1 and batches[0]["json"][1]["class"] is None
    pil = next(iter(ShardDataset(url, endpoint_url=endpoint, decode="pil", transform=lambda s: s["image"])))
    assert isinstance(pil, Image.Image) and pil.size == (16, 16)


def test_retry_resumes_a_shard_after_a_transient_error(tmp_path: Path, make_cfg: Any, run_synthesis: Any,
                                                       monkeypatch: Any) -> None:
    from cleftgan_hpc.storage.local import LocalStore
    from cleftgan_hpc.synthesis import manifest

    store = LocalStore(tmp_path / "store")
    run_synthesis(make_cfg(count=6, shard_size=6), store)
    real_open = manifest.DirSource.open
    failures = {"n": 0}

    class Flaky(io.RawIOBase):
        """Delivers 15 KB of the shard, then drops the connection."""

        def __init__(self, f: Any) -> None:
            self.f, self.sent = f, 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            if self.sent > 15_000:
                raise StorageError("connection reset by peer")
            data = self.f.read(min(len(b), 4096))
            b[: len(data)] = data
            self.sent += len(data)
            return len(data)

    def flaky_open(self: Any, name: str) -> Any:
        f = real_open(self, name)
        if name.endswith(".tar") and failures["n"] < 2:
            failures["n"] += 1
            return io.BufferedReader(Flaky(f))
        return f

    monkeypatch.setattr(manifest.DirSource, "open", flaky_open)
    monkeypatch.setattr("time.sleep", lambda s: None)
    keys = [s["__key__"] for s in ShardDataset(store.uri("datasets/toy"), decode="raw")]
    assert failures["n"] == 2 and keys == [f"{s:010d}" for s in range(6)]
    failures["n"] = -10  # more failures than retries: a clear error
    with pytest.raises(Exception, match="3 retries"):
        list(ShardDataset(store.uri("datasets/toy"), decode="raw", retries=3))


def test_refuses_uncommitted(tmp_path: Path, make_cfg: Any, run_synthesis: Any) -> None:
    from cleftgan_hpc.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    run_synthesis(make_cfg(count=10, shard_size=5, tasks=2), store, task=0)
    with pytest.raises(DatasetError, match="not committed"):
        ShardDataset(store.uri("datasets/toy"))


def test_webdataset_library_reads_our_shards(tmp_path: Path, make_cfg: Any, run_synthesis: Any) -> None:
    wds = pytest.importorskip("webdataset")
    from cleftgan_hpc.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    m = run_synthesis(make_cfg(count=7, shard_size=3), store)
    urls = [str(store.root / "datasets" / "toy" / s["name"]) for s in m["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"{i:010d}" for i in range(7)]
    assert samples[3]["png"].size == (16, 16) and samples[3]["json"]["seed"] == 3
    raw = list(wds.WebDataset(urls, shardshuffle=False))
    assert json.loads(raw[0]["json"])["sha256"]


def test_wids_opens_our_index(tmp_path: Path, make_cfg: Any, run_synthesis: Any) -> None:
    wids = pytest.importorskip("wids")
    from cleftgan_hpc.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    run_synthesis(make_cfg(count=7, shard_size=3), store)
    ds = wids.ShardListDataset(str(store.root / "datasets" / "toy" / "wids-index.json"),
                               cache_dir=str(tmp_path / "wids-cache"), transformations=[])
    assert len(ds) == 7
    sample = ds[4]  # random access: the second shard's second sample
    assert sample["__key__"] == "0000000004" and json.loads(sample[".json"].read())["seed"] == 4
    assert Image.open(sample[".png"]).size == (16, 16)

"""The dataset card (README.md beside the manifest): what it says, that it is there before the
manifest commits, that a pull copies it, and that Hugging Face `datasets` loads our shards
offline, both with explicit files and through the card's own header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cleftgan_hpc.storage.local import LocalStore
from cleftgan_hpc.synthesis.manifest import open_source
from cleftgan_hpc.synthesis.pull import pull


def trained_network(path: Path) -> Path:
    """A tiny generator saved as the finetune stage saves its network (run, stage, kimg in extra)."""
    from cleftgan_hpc.model import Generator, Network, save_checkpoint

    torch.manual_seed(0)
    g = Generator(16, 0, 16, 16, 3, channel_base=256, channel_max=16, num_fp16_res=0)
    save_checkpoint(Network(G=g, G_ema=g, extra={"run": "cleft-20260101-000000-abcd", "stage": "train", "kimg": 460}),
                    path)
    return path


def test_card_says_what_made_it_and_comes_before_the_manifest(tmp_path: Path, make_cfg: Any, run_synthesis: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    net = trained_network(tmp_path / "network.safetensors")
    store = LocalStore(tmp_path / "store")
    order: list[str] = []
    original = LocalStore.put_stream

    def recording(self: Any, key: str, *a: Any, **kw: Any) -> Any:
        order.append(key.rsplit("/", 1)[-1])
        return original(self, key, *a, **kw)

    monkeypatch.setattr(LocalStore, "put_stream", recording)
    m = run_synthesis(make_cfg(network=str(net), count=12, shard_size=5, first_seed=100, truncation_psi=0.7), store)
    assert order.index("README.md") < order.index("manifest.json") == len(order) - 1

    card = store.get_text("datasets/toy/README.md")
    header, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(header)
    assert "synthetic" in meta["tags"] and meta["configs"][0]["data_files"][0]["path"] == "shard-*.tar"
    assert "**Every face in this dataset is synthetic.**" in body
    assert m["network"]["sha256"] in body and "run `cleft-20260101-000000-abcd`, stage `train`, 460 kimg" in body
    assert "100 to 111" in body and "psi 0.7" in body and "12 PNG images of 16x16 pixels in 3 WebDataset" in body
    assert "shard-{000000..000002}.tar" in body and store.uri("datasets/toy") in body
    for loader in ("ShardDataset(", "wds.WebDataset(", "wids.ShardListDataset(", 'load_dataset("webdataset"'):
        assert loader in body

    # a network from elsewhere: the card says its training is not recorded
    other = run_synthesis(make_cfg(dataset="other", count=3), store)
    assert "not recorded" in store.get_text("datasets/other/README.md") and other["count"] == 3

    copy = tmp_path / "copy"
    pull(open_source(store.uri("datasets/toy")), copy, shards="1")
    assert (copy / "README.md").read_text() == card


def test_hugging_face_datasets_loads_our_shards_offline(tmp_path: Path, make_cfg: Any, run_synthesis: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets", reason="the dev extra installs datasets")
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    store = LocalStore(tmp_path / "store")
    m = run_synthesis(make_cfg(count=7, shard_size=3), store)
    root = store.root / "datasets" / "toy"
    files = [str(root / s["name"]) for s in m["shards"]]
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == 7 and ds[4]["__key__"] == "0000000004"
    assert ds[4]["png"].size == (16, 16) and ds[4]["json"]["seed"] == 4
    assert ds[4]["json"]["network_sha256"] == m["network"]["sha256"]
    # the card's header tells `datasets` where the data is: the directory alone is enough
    by_card = datasets.load_dataset(str(root), split="train", cache_dir=str(tmp_path / "hf-cache2"))
    assert len(by_card) == 7 and sorted(by_card["__key__"]) == [f"{i:010d}" for i in range(7)]

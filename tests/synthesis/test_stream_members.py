"""ShardDataset over shards whose samples lack the expected members (a shard written by another
tool, or edited by hand): a DataError naming the shard, the sample and what was expected, never a
bare KeyError; members it does not know are ignored."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from cleftgan_hpc.errors import CleftGanError, DataError
from cleftgan_hpc.synthesis.manifest import build_manifest
from cleftgan_hpc.synthesis.stream import ShardDataset


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed, 2 * seed, 3 * seed)).save(buf, format="PNG")
    return buf.getvalue()


def meta(seed: int) -> bytes:
    return json.dumps({"seed": seed}).encode()


def dataset(root: Path, samples: list[dict[str, bytes]]) -> str:
    """A committed one-shard dataset whose samples hold exactly the given members (ext -> bytes)."""
    root.mkdir()
    with tarfile.open(root / "shard-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, members in enumerate(samples):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:010d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tar_bytes = (root / "shard-000000.tar").read_bytes()
    shard = {"name": "shard-000000.tar", "samples": len(samples), "bytes": len(tar_bytes),
             "sha256": hashlib.sha256(tar_bytes).hexdigest(), "seeds": [0, max(len(samples) - 1, 0)]}
    manifest = build_manifest("toy", "datasets/toy", {}, "0" * 64, {}, [shard], "png")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


@pytest.mark.parametrize("decode", ["tensor", "pil", "raw"])
def test_missing_image_member_names_shard_sample_and_expectation(tmp_path: Path, decode: str) -> None:
    url = dataset(tmp_path / "ds", [{"png": png(0), "json": meta(0)}, {"json": meta(1)}])
    with pytest.raises(DataError) as info:
        list(ShardDataset(url, decode=decode))
    msg = str(info.value)
    assert "shard-000000.tar" in msg and "'0000000001'" in msg and "0000000001.png" in msg
    assert "has .json" in msg and "\n" not in msg


def test_image_with_an_unexpected_extension(tmp_path: Path) -> None:
    url = dataset(tmp_path / "ds", [{"jpg": png(0), "json": meta(0)}])
    with pytest.raises(DataError, match=r"no 0000000000\.png member .*\.png images.*has \.jpg, \.json"):
        list(ShardDataset(url))


def test_missing_json_member(tmp_path: Path) -> None:
    url = dataset(tmp_path / "ds", [{"png": png(0)}])
    with pytest.raises(DataError, match=r"shard-000000\.tar, sample '0000000000': no 0000000000\.json member"):
        list(ShardDataset(url))


def test_unreadable_members_are_data_errors(tmp_path: Path) -> None:
    url = dataset(tmp_path / "bad_json", [{"png": png(0), "json": b"{not json"}])
    with pytest.raises(DataError, match=r"0000000000\.json is not valid JSON"):
        list(ShardDataset(url))
    url = dataset(tmp_path / "bad_png", [{"png": b"not a png", "json": meta(0)}])
    with pytest.raises(CleftGanError, match=r"0000000000\.png is not a readable image"):
        list(ShardDataset(url))


def test_extra_members_are_ignored(tmp_path: Path) -> None:
    url = dataset(tmp_path / "ds", [{"png": png(i), "json": meta(i), "txt": b"a caption", "cls": b"1"} for i in range(3)])
    samples = list(ShardDataset(url))
    assert [s["__key__"] for s in samples] == [f"{i:010d}" for i in range(3)]
    assert all(set(s) == {"__key__", "image", "json"} for s in samples)
    assert samples[2]["json"] == {"seed": 2} and samples[2]["image"].dtype == torch.uint8

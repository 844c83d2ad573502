"""pull (parallel, resumable, checked against the manifest) and regenerate, from file:// and S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cleftgan_hpc.storage.base import sha256_file
from cleftgan_hpc.synthesis.commands import main
from cleftgan_hpc.synthesis.manifest import DatasetError, open_source
from cleftgan_hpc.synthesis.pull import pull
from cleftgan_hpc.synthesis.regenerate import regenerate


def _url(store: Any) -> tuple[str, list[str]]:
    endpoint = getattr(store, "endpoint_url", None)
    return store.uri("datasets/toy"), (["--endpoint-url", endpoint] if endpoint else [])


def test_pull_resume_verify_and_corruption(store: Any, make_cfg: Any, run_synthesis: Any, tmp_path: Path,
                                           capsys: Any) -> None:
    m = run_synthesis(make_cfg(count=15, shard_size=4), store)
    url, endpoint = _url(store)
    dest = tmp_path / "copy"
    assert main(["pull", url, str(dest), *endpoint, "--jobs", "3"]) == 0
    assert "4 downloaded, 0 already there" in capsys.readouterr().out
    for entry in m["shards"]:
        assert sha256_file(dest / entry["name"]) == entry["sha256"]
    assert json.loads((dest / "manifest.json").read_text())["shards"] == m["shards"]
    assert json.loads((dest / "wids-index.json").read_text())["shardlist"][0]["url"] == "shard-000000.tar"

    # resumable: what is there is kept; --verify finds a damaged local copy and fetches it again
    damaged = dest / "shard-000001.tar"
    damaged.write_bytes(b"\0" * damaged.stat().st_size)
    report = pull(open_source(url, getattr(store, "endpoint_url", None)), dest)
    assert len(report.present) == 4 and not report.downloaded
    assert main(["pull", url, str(dest), *endpoint, "--verify"]) == 0
    assert "1 re-fetched" in capsys.readouterr().out
    assert sha256_file(damaged) == m["shards"][1]["sha256"]

    # a shard damaged in the store is detected and not kept
    store.put_bytes("datasets/toy/shard-000002.tar", b"garbage" * 100)
    fresh = tmp_path / "fresh"
    assert main(["pull", url, str(fresh), *endpoint, "--shards", "1-2"]) == 1
    err = capsys.readouterr().err
    assert "1 shard(s)" in err and "shard-000002.tar" in err and "do not match the manifest" in err
    assert (fresh / "shard-000001.tar").exists() and not (fresh / "shard-000002.tar").exists()
    assert not (fresh / "manifest.json").exists()  # an incomplete copy has no manifest


def test_pull_refuses_uncommitted_and_bad_ranges(store: Any, make_cfg: Any, run_synthesis: Any,
                                                 tmp_path: Path) -> None:
    cfg = make_cfg(count=10, shard_size=5, tasks=2)
    run_synthesis(cfg, store, task=0)
    url, _ = _url(store)
    source = open_source(url, getattr(store, "endpoint_url", None))
    with pytest.raises(DatasetError, match="not committed"):
        pull(source, tmp_path / "x")
    run_synthesis(cfg, store)
    with pytest.raises(DatasetError, match="outside 0..1"):
        pull(source, tmp_path / "x", shards="0-5")
    assert len(pull(source, tmp_path / "x", shards="1").downloaded) == 1


def test_regenerate_matches(store: Any, make_cfg: Any, run_synthesis: Any, tmp_path: Path, capsys: Any,
                            tiny_cond_net: Path) -> None:
    run_synthesis(make_cfg(count=11, shard_size=5, batch=3, truncation_psi=0.7, first_seed=40), store)
    url, endpoint = _url(store)
    out = tmp_path / "img.png"
    assert main(["regenerate", url, "--seed", "47", "--out", str(out), *endpoint]) == 0  # 2nd batch of shard 1
    assert "seed 47: rebuilt image matches the stored one in shard-000001.tar" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = regenerate(open_source(url, getattr(store, "endpoint_url", None)), 50)
    assert r.matches and r.shard == "shard-000002.tar"
    assert main(["regenerate", url, "--seed", "51", *endpoint]) == 1
    assert "seed 51 is not in this dataset (seeds 40-50)" in capsys.readouterr().err
    assert main(["regenerate", url, "--seed", "41", "--network", str(tiny_cond_net), *endpoint]) == 1
    assert "not the one the dataset was made with" in capsys.readouterr().err


def test_regenerate_reports_a_difference(tmp_path: Path, make_cfg: Any, run_synthesis: Any, monkeypatch: Any,
                                         capsys: Any) -> None:
    from cleftgan_hpc.storage.local import LocalStore
    from cleftgan_hpc.synthesis import encode

    store = LocalStore(tmp_path / "store")
    run_synthesis(make_cfg(count=4), store)
    real = encode.encode_image
    monkeypatch.setattr(encode, "encode_image", lambda *a: real(*a) + b"changed")  # another encoder build, say
    assert main(["regenerate", store.uri("datasets/toy"), "--seed", "2"]) == 1
    assert "seed 2: rebuilt image DIFFERS from the stored one" in capsys.readouterr().out

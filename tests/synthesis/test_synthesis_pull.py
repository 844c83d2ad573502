"""pull (parallel, resumable, checked against the manifest; partial copies) and regenerate, from file:// and S3."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cleftgan_hpc.storage.base import sha256_file
from cleftgan_hpc.synthesis.commands import main
from cleftgan_hpc.synthesis.manifest import DatasetError, open_source
from cleftgan_hpc.synthesis.pull import pull
from cleftgan_hpc.synthesis.regenerate import regenerate
from cleftgan_hpc.synthesis.stream import ShardDataset


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
    assert (dest / "manifest.json").read_bytes() == store.get_bytes("datasets/toy/manifest.json")
    assert (dest / "wids-index.json").read_bytes() == store.get_bytes("datasets/toy/wids-index.json")
    assert sha256_file(dest / "network.safetensors") == m["network"]["sha256"]

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

    # a complete copy whose shard cannot be repaired is no longer complete: its manifest goes first
    (dest / "shard-000002.tar").write_bytes(b"\0" * m["shards"][2]["bytes"])
    assert main(["pull", url, str(dest), *endpoint, "--verify"]) == 1
    assert "shard-000002.tar" in capsys.readouterr().err and not (dest / "manifest.json").exists()


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
    # 2, not 1, when no comparison was made: 1 always means "rebuilt and differs"
    assert main(["regenerate", url, "--seed", "51", *endpoint]) == 2
    assert "seed 51 is not in this dataset (seeds 40-50)" in capsys.readouterr().err
    assert main(["regenerate", url, "--seed", "41", "--network", str(tiny_cond_net), *endpoint]) == 2
    assert "not the one the dataset was made with" in capsys.readouterr().err
    assert main(["regenerate", url, "--seed", "41", "--network", str(tmp_path / "nope.pkl"), *endpoint]) == 2
    assert "--network" in capsys.readouterr().err


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


def test_partial_pulls_add_up_to_the_original(store: Any, make_cfg: Any, run_synthesis: Any, tmp_path: Path,
                                              capsys: Any) -> None:
    m = run_synthesis(make_cfg(count=15, shard_size=4), store)  # 4 shards: seeds 0-3, 4-7, 8-11, 12-14
    original = store.get_bytes("datasets/toy/manifest.json")
    url, endpoint = _url(store)
    dest = tmp_path / "copy"
    assert main(["pull", url, str(dest), *endpoint, "--shards", "0-1"]) == 0
    part = json.loads((dest / "manifest.json").read_text())
    assert part["shards"] == m["shards"][:2] and part["count"] == 8
    assert part["subset_of"] == {"count": 15, "shards": 4, "manifest_sha256": hashlib.sha256(original).hexdigest()}
    assert [s["url"] for s in json.loads((dest / "wids-index.json").read_text())["shardlist"]] == [
        "shard-000000.tar", "shard-000001.tar"]
    assert sorted(p.name for p in dest.glob("shard-*")) == ["shard-000000.tar", "shard-000001.tar"]

    # the copy streams as a dataset of its own: each pulled sample once, nothing else
    ds = ShardDataset(str(dest), decode="raw")
    assert len(ds) == 8
    assert Counter(s["__key__"] for s in ds) == Counter(f"{seed:010d}" for seed in range(8))

    # self-contained: the network came too, so regenerate needs no --network
    assert sha256_file(dest / "network.safetensors") == m["network"]["sha256"]
    assert main(["regenerate", str(dest), "--seed", "6"]) == 0
    assert "seed 6: rebuilt image matches the stored one in shard-000001.tar" in capsys.readouterr().out
    assert main(["regenerate", str(dest), "--seed", "9"]) == 2
    assert "seed 9 is in shard-000002.tar, which this partial copy does not hold" in capsys.readouterr().err

    # pulls add up (the same range again changes nothing; another range joins it) and end in the original
    report = pull(open_source(url, getattr(store, "endpoint_url", None)), dest, shards="1")
    assert sorted(report.present) == ["shard-000000.tar", "shard-000001.tar"] and not report.downloaded
    assert main(["pull", url, str(dest), *endpoint, "--shards", "3"]) == 0
    assert [s["name"] for s in json.loads((dest / "manifest.json").read_text())["shards"]] == [
        "shard-000000.tar", "shard-000001.tar", "shard-000003.tar"]
    assert main(["pull", url, str(dest), *endpoint, "--verify"]) == 0
    assert "1 downloaded, 3 already there" in capsys.readouterr().out
    assert (dest / "manifest.json").read_bytes() == original
    assert (dest / "wids-index.json").read_bytes() == store.get_bytes("datasets/toy/wids-index.json")
    assert main(["pull", url, str(dest), *endpoint, "--shards", "0"]) == 0  # never shrinks a copy
    assert (dest / "manifest.json").read_bytes() == original
    assert Counter(s["__key__"] for s in ShardDataset(str(dest), decode="raw")) == Counter(
        f"{seed:010d}" for seed in range(15))

    # a copy of a partial copy still names the original, and --shards counts the original's shards
    half, again = tmp_path / "half", tmp_path / "again"
    pull(open_source(str(dest)), half, shards="1-2")
    pull(open_source(str(half)), again, shards="2")
    assert json.loads((again / "manifest.json").read_text())["subset_of"] == part["subset_of"]
    assert [p.name for p in again.glob("shard-*")] == ["shard-000002.tar"]
    with pytest.raises(DatasetError, match=r"holds 2 of the dataset's 4 shards, not shard\(s\) 0, 3"):
        pull(open_source(str(half)), again, shards="0-3")


def test_regenerate_without_a_network(store: Any, make_cfg: Any, run_synthesis: Any, tmp_path: Path,
                                      tiny_net: Path, capsys: Any) -> None:
    m = run_synthesis(make_cfg(count=6, shard_size=3), store)
    url, endpoint = _url(store)
    dest = tmp_path / "copy"
    assert main(["pull", url, str(dest), *endpoint]) == 0
    (dest / "network.safetensors").unlink()  # a copy made before pull copied networks
    assert main(["regenerate", str(dest), "--seed", "4"]) == 2  # not 1: that is "differs"
    err = capsys.readouterr().err
    assert "network.safetensors does not exist" in err and "--network FILE" in err and m["network"]["sha256"] in err
    assert main(["regenerate", str(dest), "--seed", "4", "--network", str(tiny_net)]) == 0

    # pulling from such a copy still brings the shards; a damaged network in the store is not kept
    assert pull(open_source(str(dest)), tmp_path / "onward").network == "missing"
    store.put_bytes("datasets/toy/network.safetensors", b"garbage")
    fresh = tmp_path / "fresh"
    assert main(["pull", url, str(fresh), *endpoint]) == 1
    assert "network sha256" in capsys.readouterr().err
    assert not (fresh / "network.safetensors").exists() and not (fresh / "manifest.json").exists()


def _tamper(store: Any, m: dict[str, Any], **shard: Any) -> None:
    """Commit a manifest whose last shard entry is changed (as someone else's dataset might be)."""
    store.put_json("datasets/toy/manifest.json", {**m, "shards": [*m["shards"][:-1], {**m["shards"][-1], **shard}]})


def test_pull_refuses_names_outside_dest(store: Any, make_cfg: Any, run_synthesis: Any, tmp_path: Path,
                                         capsys: Any) -> None:
    m = run_synthesis(make_cfg(count=8, shard_size=4), store)
    url, endpoint = _url(store)
    outside = tmp_path / "elsewhere" / "evil.tar"
    payload = b"not yours" * 100
    sha = hashlib.sha256(payload).hexdigest()
    # put where the source reads these names from, with the right sha256: only the name gives them away
    store.put_bytes("datasets/toy/" + str(outside).lstrip("/"), payload)  # S3: join_key drops the leading '/'
    store.put_bytes("datasets/evil.tar", payload)  # a directory: datasets/toy/../evil.tar
    dest = tmp_path / "d" / "copy"
    for name in ["../evil.tar", str(outside), "sub/../../evil.tar", "..", ".", "a\\b.tar", "nul\0.tar", "",
                 "manifest.json", "shard-000000.tar"]:  # the last: two entries, one file
        _tamper(store, m, name=name, sha256=sha, bytes=len(payload))
        with pytest.raises(DatasetError, match="is not a plain file name|already lists"):
            pull(open_source(url, getattr(store, "endpoint_url", None)), dest)
        assert not dest.exists() and not outside.exists()  # the whole manifest is refused before any write
        assert not (tmp_path / "d" / "evil.tar").exists()
    assert main(["pull", url, str(dest), *endpoint]) == 1
    assert "shards[1].name 'shard-000000.tar' names a file the manifest already lists" in capsys.readouterr().err
    for field, value in [("network", {**m["network"], "file": "../net.safetensors"}), ("wids_index", "/tmp/x.json")]:
        store.put_json("datasets/toy/manifest.json", {**m, field: value})
        with pytest.raises(DatasetError, match=f"{field}.* is not a plain file name"):
            pull(open_source(url, getattr(store, "endpoint_url", None)), dest)
        assert not dest.exists()


def test_pull_refuses_a_shard_whose_size_is_not_the_manifests(store: Any, make_cfg: Any, run_synthesis: Any,
                                                               tmp_path: Path) -> None:
    m = run_synthesis(make_cfg(count=8, shard_size=4), store)
    _tamper(store, m, bytes=m["shards"][-1]["bytes"] + 1)  # sha256 right, size wrong: the manifest lies
    url, _ = _url(store)
    dest = tmp_path / "copy"
    with pytest.raises(DatasetError, match=r"shard-000001.tar \(the manifest says \d+ bytes, it has \d+\)"):
        pull(open_source(url, getattr(store, "endpoint_url", None)), dest)
    assert (dest / "shard-000000.tar").exists()
    assert not (dest / "shard-000001.tar").exists() and not (dest / "manifest.json").exists()

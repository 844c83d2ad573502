"""Synthesis into a real store (file:// and the S3 server): layout, task split, resume, refusal,
overwrite, cleanup of partial uploads. Tiny 16x16 networks, tens of images."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.synthesis.manifest import DatasetError


def test_layout_manifest_and_shards(store: Any, make_cfg: Any, run_synthesis: Any) -> None:
    cfg = make_cfg(count=12, shard_size=5, first_seed=100)
    m = run_synthesis(cfg, store)
    assert m["count"] == 12 and [s["samples"] for s in m["shards"]] == [5, 5, 2]
    assert [s["seeds"] for s in m["shards"]] == [[100, 104], [105, 109], [110, 111]]
    assert m["options"]["first_seed"] == 100 and m["network"]["img_resolution"] == 16
    assert {"torch", "numpy", "pillow", "cleftgan_hpc"} <= set(m["software"])
    names = sorted(i.key.rsplit("/", 1)[-1] for i in store.list("datasets/toy/"))
    assert names == ["README.md", "manifest.json", "network.safetensors", "options.json", "shard-000000.tar",
                     "shard-000001.tar", "shard-000002.tar", "wids-index.json"]
    wids = store.get_json("datasets/toy/wids-index.json")
    assert wids["__kind__"] == "wids-shard-index-v1" and wids["shardlist"][2] == {
        "url": "shard-000002.tar", "nsamples": 2, "filesize": m["shards"][2]["bytes"]}
    for entry in m["shards"]:
        assert store.head(f"datasets/toy/{entry['name']}").sha256 == entry["sha256"]
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes("datasets/toy/shard-000002.tar"))) as tar:
        members = tar.getmembers()
        assert [x.name for x in members] == ["0000000110.png", "0000000110.json", "0000000111.png", "0000000111.json"]
        assert {(x.mtime, x.uid, x.gid, x.uname, x.mode) for x in members} == {(0, 0, 0, "", 0o644)}
        png = tar.extractfile(members[0]).read()
        meta = json.loads(tar.extractfile(members[1]).read())
    assert Image.open(io.BytesIO(png)).size == (16, 16)
    assert meta["seed"] == 110 and meta["truncation_psi"] == 1.0 and meta["class"] is None
    assert meta["network_sha256"] == m["network"]["sha256"]
    import hashlib

    assert meta["sha256"] == hashlib.sha256(png).hexdigest()
    # committed: running again changes nothing
    assert run_synthesis(cfg, store)["created"] == m["created"]


def test_tasks_split_equals_one_run(store: Any, make_cfg: Any, run_synthesis: Any, dataset_bytes: Any) -> None:
    whole = run_synthesis(make_cfg(dataset="whole", count=16, shard_size=3), store)
    split = make_cfg(dataset="split", count=16, shard_size=3, tasks=3)
    made = []
    for task in (2, 0, 1):  # any order
        assert run_synthesis(split, store, task=task) is None
        assert not store.exists("datasets/split/manifest.json")  # only the commit writes it
        made.append(sorted(i.key for i in store.list("datasets/split/shard-")))
    assert [len(x) for x in made] == [2, 4, 6]  # 6 shards: blocks of 2 per task
    m = run_synthesis(split, store)
    assert m["shards"] == whole["shards"]
    assert dataset_bytes(store, "datasets/split") == dataset_bytes(store, "datasets/whole")


def test_resume_makes_only_missing_shards(store: Any, make_cfg: Any, run_synthesis: Any, monkeypatch: Any) -> None:
    cfg = make_cfg(count=20, shard_size=5, tasks=2)
    run_synthesis(cfg, store, task=1)
    puts: list[str] = []
    original = type(store).put_file

    def counting(self: Any, key: str, *a: Any, **kw: Any) -> Any:
        puts.append(key.rsplit("/", 1)[-1])
        return original(self, key, *a, **kw)

    monkeypatch.setattr(type(store), "put_file", counting)
    run_synthesis(cfg, store)
    assert puts == ["shard-000000.tar", "shard-000001.tar"]


def test_other_options_refused_unless_overwrite(store: Any, make_cfg: Any, run_synthesis: Any) -> None:
    run_synthesis(make_cfg(count=10), store)
    with pytest.raises(DatasetError, match=r"other options \(truncation_psi: 1.0 there, 0.5 here\).*overwrite"):
        run_synthesis(make_cfg(count=10, truncation_psi=0.5), store)
    with pytest.raises(DatasetError, match="count: 10 there, 15 here"):
        run_synthesis(make_cfg(count=15), store, task=0)
    old = store.head("datasets/toy/shard-000000.tar").sha256
    m = run_synthesis(make_cfg(count=10, truncation_psi=0.5, overwrite=True), store)
    assert m["options"]["truncation_psi"] == 0.5
    assert store.head("datasets/toy/shard-000000.tar").sha256 == m["shards"][0]["sha256"] != old
    # same options again with overwrite: nothing is deleted or redone
    assert run_synthesis(make_cfg(count=10, truncation_psi=0.5, overwrite=True), store)["created"] == m["created"]


def test_foreign_objects_in_the_prefix_refused(store: Any, make_cfg: Any, run_synthesis: Any) -> None:
    store.put_bytes("datasets/toy/readme.txt", b"someone else's")
    with pytest.raises(DatasetError, match="no options.json"):
        run_synthesis(make_cfg(count=5), store)


def test_commit_cleans_partial_uploads(store: Any, make_cfg: Any, run_synthesis: Any, tmp_path: Path) -> None:
    cfg = make_cfg(count=10, shard_size=5, tasks=2)
    run_synthesis(cfg, store, task=0)
    run_synthesis(cfg, store, task=1)
    if hasattr(store, "_client"):  # S3: a multipart upload a killed task never completed or aborted
        full = f"{store.prefix}/datasets/toy/shard-000009.tar"
        up = store._client.create_multipart_upload(Bucket=store.bucket, Key=full)
        store._client.upload_part(Bucket=store.bucket, Key=full, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 100)

        def leftovers() -> list[Any]:
            resp = store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=f"{store.prefix}/datasets/")
            return resp.get("Uploads", [])
    else:  # file store: a temp file of a put that died hours ago
        stale = store.root / ".cleftgan" / "tmp" / "put-killed"
        stale.write_bytes(b"x" * 100)
        os.utime(stale, (time.time() - 7200, time.time() - 7200))

        def leftovers() -> list[Any]:
            return list((store.root / ".cleftgan" / "tmp").iterdir())
    assert leftovers()
    (tmp_path / "scratch" / "None").mkdir(parents=True)
    (tmp_path / "scratch" / "None" / "shard-000001.tar.part").write_bytes(b"half a tar")
    run_synthesis(cfg, store)
    assert leftovers() == []
    assert not (tmp_path / "scratch" / "None" / "shard-000001.tar.part").exists()


def test_labels_formats_and_resize(tmp_path: Path, tiny_cond_net: Path, make_cfg: Any, run_synthesis: Any) -> None:
    from cleftgan_hpc.storage.local import LocalStore
    from cleftgan_hpc.synthesis.shards import iter_samples

    store = LocalStore(tmp_path / "store")
    net = str(tiny_cond_net)
    m = run_synthesis(make_cfg(network=net, labels="uniform", count=12, format="webp", resize=24), store)
    with store.open_read("datasets/toy/shard-000000.tar") as f:
        samples = list(iter_samples(f))
    assert {c for s in samples for c in [json.loads(s["json"])["class"]]} <= {0, 1, 2}
    assert Image.open(io.BytesIO(samples[0]["webp"])).size == (24, 24) and m["extension"] == "webp"
    m = run_synthesis(make_cfg(network=net, labels=[0, 0, 1], count=6, format="jpeg", quality=80, dataset="j"), store)
    with store.open_read("datasets/j/shard-000000.tar") as f:
        assert {json.loads(s["json"])["class"] for s in iter_samples(f)} == {2}
    with pytest.raises(CleftGanError, match="2 weights given, but the network has 3 classes"):
        run_synthesis(make_cfg(network=net, labels=[1, 1], count=5, dataset="bad"), store)
    assert not store.exists("datasets/bad/options.json")  # a mistake does not claim the dataset
    with pytest.raises(CleftGanError, match="conditional"):
        run_synthesis(make_cfg(network=net, count=5, dataset="bad2"), store)
    with pytest.raises(CleftGanError, match="unconditional"):
        run_synthesis(make_cfg(labels=1, count=5, dataset="bad3"), store)


def test_encoding_pool_gives_the_same_bytes(tmp_path: Path, make_cfg: Any, run_synthesis: Any,
                                            dataset_bytes: Any) -> None:
    from cleftgan_hpc.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    run_synthesis(make_cfg(count=10, dataset="inline", workers=0), store)
    run_synthesis(make_cfg(count=10, dataset="pool", workers=2, upload_concurrency=2), store)
    assert dataset_bytes(store, "datasets/pool") == dataset_bytes(store, "datasets/inline")


def test_shard_whose_metadata_was_lost_is_checked_and_kept(tmp_path: Path, make_cfg: Any,
                                                           run_synthesis: Any) -> None:
    """A file-store put SIGKILLed between placing the object and writing its sidecar leaves the
    complete bytes without metadata: the re-run remakes the shard, finds the same bytes, restores it."""
    from cleftgan_hpc.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    cfg = make_cfg(count=10, shard_size=5, tasks=2)
    run_synthesis(cfg, store, task=0)
    sidecar = store.root / ".cleftgan" / "meta" / "datasets" / "toy" / "shard-000000.tar"
    sidecar.unlink()
    assert store.head("datasets/toy/shard-000000.tar").metadata == {}
    m = run_synthesis(cfg, store)
    assert store.head("datasets/toy/shard-000000.tar").metadata["samples"] == "5"
    assert m["shards"][0]["sha256"] == store.head("datasets/toy/shard-000000.tar").sha256


def test_overwrite_never_deletes_outside_the_dataset(store: Any, make_cfg: Any, run_synthesis: Any,
                                                     tiny_net: Path, tmp_path: Path, capsys: Any) -> None:
    import logging

    from cleftgan_hpc.synthesis.build import claim
    from cleftgan_hpc.synthesis.commands import main

    store.put_json("runs/job-1/run.json", {"run": "history"})
    store.put_json("datasets/other/options.json", {"options": {}})
    # a config that slipped past validation (built in code, say): the build refuses before any delete
    for dataset in ("runs/", "datasets/", "x/../runs", "cache/feature-stats"):
        cfg = make_cfg(count=4, overwrite=True).model_copy(update={"dataset": dataset})
        with pytest.raises(DatasetError, match="refusing to use .* as a dataset prefix"):
            run_synthesis(cfg, store)
    for prefix in ("runs", "cache", "datasets", "", "datasets/a/b", "team/../runs"):
        with pytest.raises(DatasetError, match="as a dataset prefix"):
            claim(store, prefix, {"x": 1}, True, logging.getLogger("test"))
    # the command line refuses the name by its flag
    args = ["synthesize", "--network", str(tiny_net), "--store", f"file://{tmp_path / 'cli'}", "--count", "4",
            "--overwrite", "--dataset", "runs/"]
    assert main(args) == 1
    assert "--dataset: dataset name 'runs/' would overlap the store's own runs/ area" in capsys.readouterr().err
    assert store.get_json("runs/job-1/run.json") == {"run": "history"}
    assert store.exists("datasets/other/options.json")


def test_failed_upload_stops_the_run_promptly_and_a_rerun_finishes(store: Any, make_cfg: Any, run_synthesis: Any,
                                                                  monkeypatch: Any) -> None:
    """S3 gone, disk full...: the run raises the storage error (it used to hang in writer.join()), stops its
    encoding processes and threads, keeps what was uploaded, and a re-run completes the dataset."""
    import multiprocessing
    import threading

    from cleftgan_hpc.errors import StorageError

    cfg = make_cfg(count=48, shard_size=4, batch=2, workers=1, upload_concurrency=2)
    original, lock, puts = type(store).put_file, threading.Lock(), [0]

    def failing(self: Any, key: str, *a: Any, **kw: Any) -> Any:
        if "/shard-" in key:
            with lock:
                puts[0] += 1
                if puts[0] > 2:
                    raise StorageError(f"cannot write {key}: No space left on device (test)")
        return original(self, key, *a, **kw)

    monkeypatch.setattr(type(store), "put_file", failing)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            run_synthesis(cfg, store)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    before = {t.ident for t in threading.enumerate()}
    runner = threading.Thread(target=attempt, daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "synthesize hung after a failed upload"
    assert isinstance(outcome[0], StorageError) and "No space left on device" in str(outcome[0])
    assert not multiprocessing.active_children()  # the encoding processes are gone
    assert not [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert sum(1 for _ in store.list("datasets/toy/shard-")) == 2 and not store.exists("datasets/toy/manifest.json")

    monkeypatch.setattr(type(store), "put_file", original)
    m = run_synthesis(cfg, store)
    assert m["count"] == 48 and len(m["shards"]) == 12

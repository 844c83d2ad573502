"""A synthesis job from start to commit: claim the dataset, skip finished shards, produce the rest,
verify, and write the manifest last.

    task i of n   claim, then only the shards of task i (no manifest)
    no task       claim, produce whatever is missing (everything when run alone), verify every
                  shard, clean up partial uploads, write the wids index and the dataset card
                  (README.md, ``card.py``), then manifest.json

The claim is ``options.json`` under the dataset, put create-only before any shard: a later run
with other options is refused (or, with overwrite, replaces the dataset once; tasks that find
the new claim carry on). A shard object carries its options digest, sample count and seed
range as metadata, so a re-run recognises finished shards with one HEAD each.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cleftgan_hpc.errors import ObjectExists
from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage
from cleftgan_hpc.layout import check_dataset
from cleftgan_hpc.storage.base import ObjectInfo, ObjectStore, join_key
from cleftgan_hpc.synthesis.card import CARD_FILE, dataset_card, network_training
from cleftgan_hpc.synthesis.layout import (
    FORMAT_EXT,
    MANIFEST_FILE,
    OPTIONS_FILE,
    WIDS_INDEX_FILE,
    Shard,
    all_shards,
    options_digest,
    synthesis_options,
    task_shards,
)
from cleftgan_hpc.synthesis.manifest import DatasetError, build_manifest, check_manifest, wids_index
from cleftgan_hpc.synthesis.pipeline import Pipeline, Recipe, shard_record

STALE_TEMP_S = 3600.0  # file-store temp files older than this belong to dead puts
HEAD_CONCURRENCY = 16


def network_copy_name(path: Path) -> str:
    """The network's file name inside the dataset (kept so regenerate needs nothing else)."""
    return "network" + (path.suffix if path.suffix in (".pkl", ".safetensors") else ".bin")


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in keys if old.get(k) != new.get(k))


def check_dataset_prefix(prefix: str) -> str:
    """``prefix`` if it is a dataset's own prefix (``datasets/NAME`` or a user prefix outside the store's
    areas), else DatasetError. The spec checks the name already; this guards the deletes below it."""
    try:
        check_dataset(prefix)
    except ValueError as e:
        raise DatasetError(f"refusing to use {prefix!r} as a dataset prefix: {e}") from None
    if "/" not in prefix:  # a top-level area of its own: every dataset prefix has two parts or more
        raise DatasetError(f"refusing to use {prefix!r} as a dataset prefix: expected datasets/NAME or TEAM/NAME")
    return prefix


def claim(store: ObjectStore, prefix: str, options: dict[str, Any], overwrite: bool, log: logging.Logger) -> None:
    """Make ``options`` the dataset's options, or refuse when it was made with others."""
    check_dataset_prefix(prefix)  # before anything is written or deleted under it
    key = join_key(prefix, OPTIONS_FILE)
    for _ in range(3):  # a concurrent task may claim between our read and our put
        existing = store.get_json(key) if store.exists(key) else None
        if existing is not None and existing.get("options") == options:
            return
        if existing is not None or any(True for _ in store.list(prefix + "/")):
            what = (f"was made with other options ({_differences(existing.get('options', {}), options)})"
                    if existing is not None else "holds objects but no options.json (not a dataset of ours)")
            if not overwrite:
                raise DatasetError(
                    f"{store.uri(prefix)} {what}; choose another dataset name, or set overwrite "
                    "(--overwrite) to delete it and start again"
                )
            log.warning(f"overwrite: deleting {store.uri(prefix)}/ ({what})")
            store.delete_prefix(prefix + "/")
        try:
            store.put_json(key, {"options": options, "options_sha256": options_digest(options)}, if_absent=True)
            return
        except ObjectExists:
            continue
    raise DatasetError(f"could not claim {store.uri(prefix)}: other runs keep changing it")


def shard_ok(info: ObjectInfo | None, shard: Shard, recipe: Recipe) -> bool:
    return info is not None and info.sha256 is not None and info.metadata == recipe.shard_metadata(shard)


def head_all(store: ObjectStore, prefix: str, shards: list[Shard]) -> list[tuple[Shard, ObjectInfo | None]]:
    """HEAD every shard, a few at a time (thousands of shards take seconds, not minutes)."""
    with ThreadPoolExecutor(HEAD_CONCURRENCY) as pool:
        return list(zip(shards, pool.map(lambda s: store.head(join_key(prefix, s.name)), shards), strict=True))


def find_finished(store: ObjectStore, recipe: Recipe, shards: list[Shard], overwrite: bool) -> dict[int, ObjectInfo]:
    """The shards already in the store with this recipe's metadata (one listing, then a HEAD per hit)."""
    present = {info.key.rsplit("/", 1)[-1] for info in store.list(recipe.prefix + "/shard-")}
    heads = head_all(store, recipe.prefix, [s for s in shards if s.name in present])
    done: dict[int, ObjectInfo] = {}
    for shard, info in heads:
        key = join_key(recipe.prefix, shard.name)
        if shard_ok(info, shard, recipe):
            done[shard.index] = info  # type: ignore[assignment]
        elif info is not None and not info.metadata:
            # a file-store put killed between placing the object and its sidecar: complete bytes, no
            # metadata. Made again; the upload then checks the bytes are the same and restores it.
            continue
        elif overwrite:
            store.delete(key)
        else:
            raise DatasetError(f"{store.uri(key)} was not made by this recipe (its metadata differs); "
                               "set overwrite to replace it")
    return done


def cleanup_partial_uploads(store: ObjectStore, prefix: str, log: logging.Logger) -> int:
    """Remove what killed uploads left: unfinished multipart uploads under the dataset (S3), stale
    temp files (file store; they carry no key, so only old ones are safe to remove)."""
    client = getattr(store, "_client", None)
    if client is None:
        n = store.cleanup_incomplete(older_than_s=STALE_TEMP_S)
    else:  # every task has finished when the commit runs, so any upload under the dataset is dead
        # (S3Store's client: cleanup_incomplete() has no prefix argument, and the store's whole prefix
        # may hold other stages' uploads in flight)
        n, bucket = 0, store.bucket  # type: ignore[attr-defined]
        full = join_key(getattr(store, "prefix", ""), prefix) + "/"
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=full):
            for up in page.get("Uploads", ()):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                n += 1
    if n:
        log.info(f"removed {n} partial upload(s) left by killed tasks")
    return n


def synthesize(
    cfg: SynthesizeStage,
    store: ObjectStore,
    network_path: Path,
    *,
    scratch: Path,
    task: int | None = None,
    device: str = "cpu",
    cpus: int = 1,
    log: logging.Logger | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_images: Callable[[int], None] = lambda n: None,
) -> dict[str, Any] | None:
    """Run task ``task`` of ``cfg`` (None: the whole job and its commit). Returns the manifest when
    committed, else None. Raises StopRequested when ``should_stop`` turned true."""
    from cleftgan_hpc.context import StopRequested
    from cleftgan_hpc.storage.base import sha256_file
    from cleftgan_hpc.synthesis.generate import check_labels, load_generator

    log = log or logging.getLogger(__name__)
    prefix = cfg.prefix
    g = load_generator(network_path, device)
    check_labels(cfg.labels, g.c_dim)  # before the claim: a mistake must not claim the dataset
    network_sha = sha256_file(network_path)
    options = synthesis_options(cfg, network_sha)
    digest = options_digest(options)
    claim(store, prefix, options, cfg.overwrite, log)

    manifest_key = join_key(prefix, MANIFEST_FILE)
    if store.exists(manifest_key):
        manifest = check_manifest(store.get_json(manifest_key), store.uri(manifest_key))
        if manifest.get("options_sha256") == digest:
            log.info(f"{store.uri(prefix)} is already committed ({manifest['count']} images); nothing to do")
            return manifest if task is None else None

    copy_key = join_key(prefix, network_copy_name(network_path))
    if not store.exists(copy_key):
        with contextlib.suppress(ObjectExists):  # another task copied it first
            store.put_file(copy_key, network_path, if_absent=True)

    recipe = Recipe(prefix=prefix, options_sha256=digest, network_sha256=network_sha,
                    truncation_psi=cfg.truncation_psi, truncation_cutoff=cfg.truncation_cutoff, labels=cfg.labels,
                    fmt=cfg.format, quality=cfg.effective_quality, resize=cfg.resize, batch=cfg.batch)
    shards = all_shards(cfg.seed_start, cfg.image_count, cfg.shard_size)
    mine = task_shards(shards, task, cfg.tasks)
    done = find_finished(store, recipe, mine, cfg.overwrite)
    todo = [s for s in mine if s.index not in done]
    who = "all tasks" if task is None else f"task {task}/{cfg.tasks}"
    log.info(f"{who}: {len(mine)} shards, {len(done)} already done, {len(todo)} to make ({store.uri(prefix)})")

    shutil.rmtree(scratch, ignore_errors=True)  # half-written tars of a killed attempt
    if todo:
        workers = cfg.workers if cfg.workers is not None else max(0, cpus - 1)
        if device == "cpu":  # leave the encoders their cores: oversubscribed OpenMP threads spin and crawl
            import torch

            torch.set_num_threads(max(1, cpus - workers))
        pipe = Pipeline(g, recipe, store, scratch, device=device, workers=workers,
                        upload_concurrency=cfg.upload_concurrency, log=log, should_stop=should_stop,
                        on_images=on_images)
        pipe.run(todo)
        if pipe.stopped:
            raise StopRequested(f"{who} stopped with shards left to make; run it again to resume")
    if task is not None:
        return None
    return commit(store, cfg, recipe, shards, options, network_path, g, log)


def commit(
    store: ObjectStore, cfg: SynthesizeStage, recipe: Recipe, shards: list[Shard], options: dict[str, Any],
    network_path: Path, g: Any, log: logging.Logger,
) -> dict[str, Any]:
    """Check every shard (present, this recipe's, a sha256), then write the wids index, the card and the manifest."""
    from cleftgan_hpc.synthesis.generate import network_info

    records, bad = [], []
    for shard, info in head_all(store, recipe.prefix, shards):
        if not shard_ok(info, shard, recipe):
            bad.append(shard.name)
            continue
        records.append(shard_record(shard, info.size, str(info.sha256)))  # type: ignore[union-attr]
    if bad:
        raise DatasetError(f"cannot commit {store.uri(recipe.prefix)}: {len(bad)} shard(s) missing or not "
                           f"this recipe's, e.g. {', '.join(bad[:5])}; run the synthesis again to make them")
    cleanup_partial_uploads(store, recipe.prefix, log)
    network = {"sha256": recipe.network_sha256, "source": cfg.network, "file": network_copy_name(network_path),
               **network_info(g)}
    manifest = build_manifest(cfg.dataset, recipe.prefix, options, recipe.options_sha256, network, records,
                              FORMAT_EXT[cfg.format])
    store.put_json(join_key(recipe.prefix, WIDS_INDEX_FILE), wids_index(cfg.dataset, records))
    card = dataset_card(manifest, store.uri(recipe.prefix), network_training(network_path, cfg.network))
    store.put_text(join_key(recipe.prefix, CARD_FILE), card)  # before the manifest: a committed dataset has one
    key = join_key(recipe.prefix, MANIFEST_FILE)
    try:
        store.put_json(key, manifest, if_absent=True)
    except ObjectExists:
        existing = store.get_json(key)
        if existing.get("options_sha256") != recipe.options_sha256:
            raise DatasetError(f"{store.uri(key)} was committed meanwhile by a run with other options") from None
        return existing
    log.info(f"committed {store.uri(recipe.prefix)}: {manifest['count']} images in {len(records)} shards")
    return manifest

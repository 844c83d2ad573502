"""Download a committed dataset: parallel, resumable, every file checked against the manifest.

A shard already in DEST with the manifest's size is kept (``verify`` re-hashes it first and
re-downloads it when it differs); a download whose sha256 or size differs from the manifest is
deleted and reported (the manifest is the contract: a mismatch is a corrupt dataset). Every name
the manifest gives is checked when it is read (``check_manifest``: plain file names only), and
each target again here, so nothing is written outside DEST. The dataset's network file comes too
(checked against the manifest's sha256), so ``regenerate`` works on the copy. The manifest is
written last in DEST too, so a copy is complete iff it has one, and it describes exactly what DEST
holds: a partial pull (``shards``) writes one listing only the shards copied, with ``count``
theirs and ``subset_of`` naming the original. A later pull adds to the copy (the shards the local
manifest lists stay in it); once it holds every shard, the original manifest is written byte for
byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleftgan_hpc.errors import ObjectNotFound
from cleftgan_hpc.storage.base import sha256_file, write_file_atomically
from cleftgan_hpc.synthesis.card import CARD_FILE
from cleftgan_hpc.synthesis.layout import MANIFEST_FILE
from cleftgan_hpc.synthesis.manifest import DatasetError, DatasetSource, DirSource, check_manifest, wids_index


def parse_shard_range(text: str, n: int) -> list[int]:
    """'0-9,12' -> [0..9, 12]; indices must be < n (the manifest's shard count)."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise DatasetError(f"bad shard range {part!r}: expected e.g. 0-9 or 3,5,7")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= n:
            raise DatasetError(f"shard range {part!r} is outside 0..{n - 1}")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


@dataclass
class PullReport:
    downloaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # in the source: sha256 differs from the manifest
    wrong_size: list[str] = field(default_factory=list)  # sha256 right, size not the manifest's: a corrupt manifest
    network: str = "none"  # the network file: downloaded, present, missing (the source has none) or corrupt
    shards: int = 0  # shards the copy's manifest lists
    complete: bool = False  # the copy holds every shard of the source (its manifest is the source's)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()  # as the store's put_json


def _write_bytes(path: Path, data: bytes) -> None:
    write_file_atomically(io.BytesIO(data), path)


def _read_manifest(source: DatasetSource) -> tuple[dict[str, Any], bytes]:
    """The manifest and its exact bytes (a full copy keeps them; a partial one records their sha256)."""
    try:
        with source.open(MANIFEST_FILE) as f:
            raw = f.read()
        return check_manifest(json.loads(raw), source.uri(MANIFEST_FILE)), raw
    except (ObjectNotFound, FileNotFoundError, ValueError):
        source.manifest()  # raises the clear error (not committed, not JSON)
        raise


def _target(dest: Path, name: str) -> Path:
    """DEST / name, refused unless it is a file directly in DEST (a second guard behind check_manifest)."""
    root = Path(os.path.abspath(dest))
    path = Path(os.path.normpath(root / name))
    if path.parent != root or path.name != name:
        raise DatasetError(f"refusing to write {name!r}: it is not a plain file name inside {root}")
    return path


def _vouched(dest: Path) -> dict[str, str]:
    """name -> sha256 of the shards DEST's manifest lists (none without a valid one)."""
    try:
        return {s["name"]: s["sha256"] for s in DirSource(dest).manifest()["shards"]}
    except (DatasetError, KeyError, TypeError):
        return {}


def _select(manifest: dict[str, Any], shards: str) -> set[int]:
    """Positions in the manifest's shard list of the shards the range names. The range counts the
    original's shards (shard-000007.tar is 7), also when the source is a partial copy."""
    opts, entries = manifest["options"], manifest["shards"]
    total = (manifest.get("subset_of") or {}).get("shards", len(entries))
    at = {(e["seeds"][0] - opts["first_seed"]) // opts["shard_size"]: i for i, e in enumerate(entries)}
    wanted = parse_shard_range(shards, total)
    if lacking := [k for k in wanted if k not in at]:
        raise DatasetError(
            f"this partial copy holds {len(entries)} of the dataset's {total} shards, not shard(s) "
            f"{', '.join(map(str, lacking))}: pull them from the original"
        )
    return {at[k] for k in wanted}


def subset_manifest(manifest: dict[str, Any], raw: bytes, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a copy holding only ``shards``; ``subset_of`` names the original (kept from a
    source that is itself a partial copy: it is the original that matters)."""
    subset_of = manifest.get("subset_of") or {
        "count": manifest["count"], "shards": len(manifest["shards"]),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
    }
    return {**manifest, "shards": shards, "count": sum(s["samples"] for s in shards), "subset_of": subset_of}


def pull(
    source: DatasetSource, dest: Path, *, shards: str | None = None, verify: bool = False, jobs: int = 8
) -> PullReport:
    """Copy the dataset's shards (all, or the ``shards`` range, plus those DEST's manifest already lists)
    and its network into ``dest``; DatasetError if any is corrupt."""
    manifest, raw = _read_manifest(source)
    entries = manifest["shards"]
    chosen = _select(manifest, shards) if shards else set(range(len(entries)))
    dest.mkdir(parents=True, exist_ok=True)
    vouched = _vouched(dest)
    # shards an earlier pull of this same data committed stay in the copy: pulls add up, never shrink it
    chosen |= {i for i, e in enumerate(entries) if vouched.get(e["name"]) == e["sha256"]}
    target = [entries[i] for i in sorted(chosen)]
    report = PullReport()

    def withdraw() -> None:
        # the local manifest vouches for what is about to change: a pull that fails now must not leave
        # a copy that looks complete
        (dest / MANIFEST_FILE).unlink(missing_ok=True)

    def one(entry: dict[str, Any]) -> None:
        name, path = entry["name"], _target(dest, entry["name"])
        if path.is_file() and path.stat().st_size == entry["bytes"] and vouched.get(name) in (None, entry["sha256"]):
            if not verify or sha256_file(path) == entry["sha256"]:
                report.present.append(name)
                return
            report.repaired.append(name)
        if name in vouched:
            withdraw()
        sha = source.download(name, path)
        if sha != entry["sha256"]:
            path.unlink(missing_ok=True)
            report.corrupt.append(name)
        elif (size := path.stat().st_size) != entry["bytes"]:
            # the manifest contradicts itself; kept, the copy would be fetched again by every later pull
            path.unlink(missing_ok=True)
            report.wrong_size.append(f"{name} (the manifest says {entry['bytes']} bytes, it has {size})")
        elif name not in report.repaired:
            report.downloaded.append(name)

    def network() -> None:
        net = manifest.get("network") or {}
        if not net.get("file"):
            return
        path, sha = _target(dest, net["file"]), net.get("sha256")
        if path.is_file() and (sha is None or sha256_file(path) == sha):
            report.network = "present"
            return
        if vouched:
            withdraw()
        try:
            got = source.download(net["file"], path)
        except ObjectNotFound:
            report.network = "missing"  # e.g. a copy pulled before pull copied networks: the shards still come
            return
        if sha is not None and got != sha:
            path.unlink(missing_ok=True)
            report.network = "corrupt"
        else:
            report.network = "downloaded"

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        waits = [pool.submit(network)] + [pool.submit(one, e) for e in target]
        for w in waits:
            w.result()
    if report.corrupt:
        raise DatasetError(
            f"{len(report.corrupt)} shard(s) in {source.url} do not match the manifest's sha256 and were not "
            f"kept: {', '.join(sorted(report.corrupt))}. The stored copy is damaged; re-create those shards "
            "(delete them and run the synthesis again) or pull from a good copy"
        )
    if report.wrong_size:
        raise DatasetError(
            f"{len(report.wrong_size)} shard(s) in {source.url} have the manifest's sha256 but not its size, so the "
            f"manifest is corrupt and they were not kept: {', '.join(sorted(report.wrong_size))}. Commit the dataset "
            "again (run the synthesis) or pull from a good copy"
        )
    if report.network == "corrupt":
        raise DatasetError(
            f"{source.uri(manifest['network']['file'])} does not match the manifest's network sha256 and was not "
            "kept. The stored copy is damaged; put the network the dataset was made with back there"
        )
    report.shards, report.complete = len(target), len(target) == len(entries)
    with contextlib.suppress(ObjectNotFound):  # the card travels with the copy (older datasets have none)
        source.download(CARD_FILE, _target(dest, CARD_FILE))
    index = manifest.get("wids_index")
    if report.complete:  # the source's own files, as they are
        if index:
            source.download(index, _target(dest, index))
        _write_bytes(dest / MANIFEST_FILE, raw)  # last: marks the copy complete
        return report
    if index:
        _write_bytes(_target(dest, index), _json_bytes(wids_index(manifest["name"], target)))
    _write_bytes(dest / MANIFEST_FILE, _json_bytes(subset_manifest(manifest, raw, target)))  # last: the marker
    return report

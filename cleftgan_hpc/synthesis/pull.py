"""Download a committed dataset: parallel, resumable, every shard checked against the manifest.

A shard already in DEST with the manifest's size is kept (``verify`` re-hashes it first and
re-downloads it when it differs); a download whose sha256 differs from the manifest is deleted
and reported. The manifest is written last in DEST too, so a copy is complete iff it has one.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleftgan_hpc.storage.base import sha256_file
from cleftgan_hpc.synthesis.manifest import DatasetError, DatasetSource


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


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def pull(
    source: DatasetSource, dest: Path, *, shards: str | None = None, verify: bool = False, jobs: int = 8
) -> PullReport:
    """Copy the dataset's shards (all, or the ``shards`` range) into ``dest``; DatasetError if any is corrupt."""
    manifest = source.manifest()
    entries = manifest["shards"]
    chosen = [entries[i] for i in parse_shard_range(shards, len(entries))] if shards else entries
    dest.mkdir(parents=True, exist_ok=True)
    report = PullReport()

    def one(entry: dict[str, Any]) -> None:
        path = dest / entry["name"]
        if path.is_file() and path.stat().st_size == entry["bytes"]:
            if not verify or sha256_file(path) == entry["sha256"]:
                report.present.append(entry["name"])
                return
            path.unlink()
            report.repaired.append(entry["name"])
        sha = source.download(entry["name"], path)
        if sha != entry["sha256"]:
            path.unlink(missing_ok=True)
            report.corrupt.append(entry["name"])
        elif entry["name"] not in report.repaired:
            report.downloaded.append(entry["name"])

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(one, chosen))
    if report.corrupt:
        raise DatasetError(
            f"{len(report.corrupt)} shard(s) in {source.url} do not match the manifest's sha256 and were not "
            f"kept: {', '.join(sorted(report.corrupt))}. The stored copy is damaged; re-create those shards "
            "(delete them and run the synthesis again) or pull from a good copy"
        )
    index = manifest.get("wids_index")
    if index:
        with source.open(index) as f:
            _write_json(dest / index, json.load(f))
    _write_json(dest / "manifest.json", manifest)  # last: marks the local copy complete
    return report

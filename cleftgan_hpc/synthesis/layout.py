"""Where every image goes: shard k holds a fixed seed range, task i a fixed block of shards.

Nothing here depends on timing, the number of tasks that actually ran, or the machine: that
is what makes a killed, resumed or split run end byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage
from cleftgan_hpc.storage.base import join_key

FORMAT_EXT = {"png": "png", "jpeg": "jpg", "webp": "webp"}
OPTIONS_FILE = "options.json"  # the dataset's claim: written (create-only) before any shard
MANIFEST_FILE = "manifest.json"  # the commit marker: written last
WIDS_INDEX_FILE = "wids-index.json"


@dataclass(frozen=True)
class Shard:
    """One shard: ``count`` consecutive seeds starting at ``first_seed``."""

    index: int
    first_seed: int
    count: int

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.count)

    @property
    def last_seed(self) -> int:
        return self.first_seed + self.count - 1


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sample_key(seed: int) -> str:
    """The WebDataset key of a seed's sample: digits only (WebDataset splits names at the first dot)."""
    return f"{seed:010d}"


def all_shards(seed_start: int, count: int, shard_size: int) -> list[Shard]:
    return [
        Shard(k, seed_start + off, min(shard_size, count - off))
        for k, off in enumerate(range(0, count, shard_size))
    ]


def task_shards(shards: list[Shard], task: int | None, tasks: int) -> list[Shard]:
    """Task ``task`` of ``tasks`` gets the contiguous block [task*n//tasks, (task+1)*n//tasks); None: all."""
    if task is None:
        return list(shards)
    if not 0 <= task < tasks:
        raise ValueError(f"task index {task} is out of range 0..{tasks - 1}")
    n = len(shards)
    return shards[task * n // tasks : (task + 1) * n // tasks]


def batches(shard: Shard, batch: int) -> list[list[int]]:
    """The seeds of each forward pass: aligned to the shard's start, so a re-run repeats them exactly."""
    seeds = list(shard.seeds)
    return [seeds[i : i + batch] for i in range(0, len(seeds), batch)]


def synthesis_options(cfg: SynthesizeStage, network_sha256: str) -> dict[str, Any]:
    """Everything that decides the bytes of the dataset (and nothing that does not, e.g. tasks)."""
    return {
        "network_sha256": network_sha256,
        "first_seed": cfg.seed_start,
        "count": cfg.image_count,
        "truncation_psi": cfg.truncation_psi,
        "truncation_cutoff": cfg.truncation_cutoff,
        "labels": cfg.labels,
        "format": cfg.format,
        "quality": cfg.effective_quality,
        "resize": cfg.resize,
        "shard_size": cfg.shard_size,
        "batch": cfg.batch,
    }


def options_digest(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dataset_key(prefix: str, name: str) -> str:
    return join_key(prefix, name)

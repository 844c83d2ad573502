"""The store's layout: how keys are formed, and which top-level area holds what.

    runs/<run-id>/spec.yaml, runs/<run-id>/stages/<stage>/...   run records and stage outputs
    datasets/<name>/...                                          synthesized datasets
    cache/...                                                    reusable measurements (feature stats)
    .cleftgan/...                                                the file store's own bookkeeping

Every part of the project forms keys here, so no two of them can disagree on where a run or a
dataset lives, and a dataset can never be named into another area.
"""

from __future__ import annotations

import re

from cleftgan_hpc.errors import StorageError

RUNS_AREA = "runs"
DATASETS_AREA = "datasets"
CACHE_AREA = "cache"
# top-level areas that hold something other than datasets: a dataset there would mix with them,
# and its overwrite would delete them
RESERVED_AREAS = frozenset({RUNS_AREA, CACHE_AREA, ".cleftgan"})
_DATASET_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def join_key(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid relative object key, else raise StorageError."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise StorageError(f"invalid object key {key!r}: expected a relative path like 'runs/x/file'")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid object key {key!r}: empty, '.' or '..' parts are not allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise StorageError(f"invalid object key {key!r}: control characters are not allowed")
    return key


def run_prefix(run_id: str) -> str:
    """The store prefix of one run: its spec and its stages."""
    return join_key(RUNS_AREA, run_id)


def stage_prefix(run_id: str, stage: str) -> str:
    """The store prefix holding everything of one stage of one run."""
    return join_key(RUNS_AREA, run_id, "stages", stage)


def check_dataset(dataset: str) -> str:
    """``dataset`` if it names a prefix of its own, else ValueError saying why and what to use instead.

    A plain name (letters, digits, '_', '.', '-'; no leading '.') goes to ``datasets/<name>``. A name
    with '/' is a store prefix: two or more such parts (no empty, '.' or '..' part, no leading or
    trailing '/'), and under datasets/ exactly ``datasets/<name>`` (a dataset nested in another would
    be deleted by the other's overwrite). A first part naming a reserved area (runs, cache) is
    refused, as a plain name too: ``cache`` would be harmless there but reads as the cache.
    """
    parts = dataset.split("/")
    top = parts[0].lower()  # lower: a case-insensitive filesystem holds Runs/ in runs/
    if top in RESERVED_AREAS:
        raise ValueError(
            f"dataset name {dataset!r} would overlap the store's own {top}/ area (overwrite would delete it); "
            "choose another name"
        )
    if bad := [p for p in parts if not _DATASET_PART.fullmatch(p)]:
        raise ValueError(
            f"bad dataset name {dataset!r} (part {bad[0]!r}): use letters, digits, '_', '.', '-' "
            "(e.g. faces-v1), or a store prefix like team/faces-v1 with no empty, '.' or '..' parts"
        )
    if top == DATASETS_AREA and len(parts) > 2:
        raise ValueError(
            f"dataset {dataset!r} would be inside dataset {'/'.join(parts[:2])!r}; use {parts[-1]!r} (datasets/NAME)"
        )
    return dataset


def dataset_prefix(dataset: str) -> str:
    """The store prefix of a dataset: ``datasets/<name>`` for a plain name, else the prefix as given."""
    return dataset.strip("/") if "/" in dataset else f"{DATASETS_AREA}/{dataset}"

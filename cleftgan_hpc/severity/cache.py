"""Severity-index scores of a real dataset, cached in the store: computed once per (dataset, normal
network, options) and reused by every later severity stage and evaluation.

Scoring 514 faces at 1024 costs GPU hours, and the real set's scores depend only on the images
and the scorer (``SeverityIndex.digest``: network, LPIPS network, options, version), so entries
are keyed by both:

    cache/severity-index/<dataset sha256>/<scorer digest>.npz

An entry holds the table (``scorer.COLUMNS``: float64 [N, 5]), the image names and a JSON header
naming what it was computed from; it is read with ``allow_pickle=False`` and checked against
the header, and an unreadable or mismatched entry is recomputed rather than trusted.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np

from cleftgan_hpc.errors import StorageError
from cleftgan_hpc.layout import CACHE_AREA
from cleftgan_hpc.storage.base import ObjectStore, join_key

FORMAT_VERSION = 1
DEFAULT_PREFIX = join_key(CACHE_AREA, "severity-index")


class ScoreCache:
    """Real-set severity-index tables in ``store`` under ``prefix``."""

    def __init__(self, store: ObjectStore, prefix: str = DEFAULT_PREFIX) -> None:
        self.store, self.prefix = store, prefix

    def key(self, dataset_sha256: str, scorer_digest: str) -> str:
        for value in (dataset_sha256, scorer_digest):
            if not (value and all(c in "0123456789abcdef" for c in value)):
                raise ValueError(f"cache keys are hex digests, got {value!r}")
        return join_key(self.prefix, dataset_sha256, scorer_digest + ".npz")

    def get(self, dataset_sha256: str, scorer_digest: str, count: int) -> np.ndarray | None:
        """The cached table [count, 5], or None when absent, unreadable or made from something else."""
        key = self.key(dataset_sha256, scorer_digest)
        try:
            if not self.store.exists(key):
                return None
            with np.load(io.BytesIO(self.store.get_bytes(key)), allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode())
                table = np.asarray(z["table"], dtype=np.float64)
        except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError, zipfile.BadZipFile, StorageError):
            return None
        want = {"format": FORMAT_VERSION, "dataset_sha256": dataset_sha256, "scorer_digest": scorer_digest,
                "count": count}
        if not isinstance(header, dict) or any(header.get(k) != v for k, v in want.items()):
            return None
        if table.shape != (count, 5) or not np.all(np.isfinite(table[:, 0])):
            return None
        return table

    def put(self, dataset_sha256: str, scorer_digest: str, table: np.ndarray, names: list[str]) -> str:
        """Store ``table`` (replacing any old entry, one whole-object put); return the key."""
        key = self.key(dataset_sha256, scorer_digest)
        header = {"format": FORMAT_VERSION, "dataset_sha256": dataset_sha256, "scorer_digest": scorer_digest,
                  "count": int(len(table))}
        buf = io.BytesIO()
        np.savez(buf, table=np.asarray(table, dtype=np.float64), names=np.array(names, dtype=str),
                 header=np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8))
        self.store.put_bytes(key, buf.getvalue())
        return key

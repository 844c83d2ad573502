"""Feature statistics of a real set (mean, covariance, features), cached in an ObjectStore.

Computing Inception features of the training set at every snapshot is wasted work: they
depend only on the images and the extractor. Entries are keyed by both hashes (and an
optional variant string for anything else that changes them, e.g. x-flips or an item cap):

    <prefix>/<dataset_hash>/<extractor_digest>[-<variant>].npz

An entry is an ``.npz`` (read with ``allow_pickle=False``: nothing in it can execute) holding
``mean`` [D] float64, ``cov`` [D, D] float64, ``features`` [N, D] float32 (for KID) and a JSON
header naming what it was computed from, checked on read. A corrupt or mismatched entry is
recomputed and overwritten rather than trusted.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cleftgan_hpc.errors import CleftGanError, StorageError
from cleftgan_hpc.layout import CACHE_AREA
from cleftgan_hpc.metrics.fid import feature_mean_cov
from cleftgan_hpc.storage.base import ObjectStore, join_key

FORMAT_VERSION = 1
DEFAULT_PREFIX = join_key(CACHE_AREA, "feature-stats")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class FeatureStats:
    """Gaussian fit and raw features of one image set under one extractor."""

    mean: np.ndarray  # [D] float64
    cov: np.ndarray  # [D, D] float64, biased (1/N)
    features: np.ndarray  # [N, D] float32

    @property
    def num_items(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        feats = np.asarray(features, dtype=np.float32)
        mean, cov = feature_mean_cov(feats)
        return cls(mean=mean, cov=cov, features=feats)

    def to_bytes(self, header: dict[str, object] | None = None) -> bytes:
        head = {"format": FORMAT_VERSION, **(header or {})}
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, cov=self.cov, features=self.features,
                 header=np.frombuffer(json.dumps(head, sort_keys=True).encode(), dtype=np.uint8))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[FeatureStats, dict[str, object]]:
        """Parse an entry; raise CleftGanError when it is malformed. Returns (stats, header)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode())
                stats = cls(mean=z["mean"], cov=z["cov"], features=z["features"])
        except (ValueError, KeyError, OSError, EOFError, UnicodeDecodeError) as e:
            raise CleftGanError(f"malformed feature-statistics entry: {e}") from e
        n, d = stats.features.shape if stats.features.ndim == 2 else (0, 0)
        if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION or n < 1 \
                or stats.mean.shape != (d,) or stats.cov.shape != (d, d):
            raise CleftGanError("malformed feature-statistics entry: unexpected format or shapes")
        return stats, header


def _token(value: str, what: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise CleftGanError(f"{what} {value!r} cannot name a cache entry: use letters, digits, '.', '_' or '-'")
    return value


class FeatureStatsCache:
    """Real-set feature statistics in ``store`` under ``prefix``."""

    def __init__(self, store: ObjectStore, prefix: str = DEFAULT_PREFIX) -> None:
        self.store, self.prefix = store, prefix

    def key(self, dataset_hash: str, extractor_digest: str, variant: str = "") -> str:
        name = _token(extractor_digest, "extractor digest")
        if variant:
            name += "-" + _token(variant, "variant")
        return join_key(self.prefix, _token(dataset_hash, "dataset hash"), name + ".npz")

    def get(self, dataset_hash: str, extractor_digest: str, variant: str = "") -> FeatureStats | None:
        """The cached statistics, or None when absent, unreadable or made from something else."""
        key = self.key(dataset_hash, extractor_digest, variant)
        try:
            if not self.store.exists(key):
                return None
            stats, header = FeatureStats.from_bytes(self.store.get_bytes(key))
        except (CleftGanError, StorageError):
            return None
        want = {"dataset_hash": dataset_hash, "extractor_digest": extractor_digest, "variant": variant}
        if any(header.get(k) != v for k, v in want.items()):
            return None
        return stats

    def put(self, stats: FeatureStats, dataset_hash: str, extractor_digest: str, variant: str = "") -> str:
        """Store ``stats`` (atomically, replacing any old entry); return the key."""
        key = self.key(dataset_hash, extractor_digest, variant)
        header = {"dataset_hash": dataset_hash, "extractor_digest": extractor_digest, "variant": variant,
                  "num_items": stats.num_items, "dim": stats.dim}
        self.store.put_bytes(key, stats.to_bytes(header))
        return key

    def get_or_compute(
        self, dataset_hash: str, extractor_digest: str, compute: Callable[[], np.ndarray], variant: str = ""
    ) -> tuple[FeatureStats, bool]:
        """Cached statistics, or ``compute()`` features [N, D], cache and return them.

        Returns (stats, hit). In a data-parallel job call it on one rank (the others wait and
        then ``get``), so the features are computed once.
        """
        cached = self.get(dataset_hash, extractor_digest, variant)
        if cached is not None:
            return cached, True
        stats = FeatureStats.from_features(compute())
        self.put(stats, dataset_hash, extractor_digest, variant)
        return stats, False

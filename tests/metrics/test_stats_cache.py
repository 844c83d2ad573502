"""The real-set feature-statistics cache: round trip through a store, keys, bad entries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics.cache import FeatureStats, FeatureStatsCache
from cleftgan_hpc.storage.local import LocalStore

DATA, EXT = "ds-0123abcd", "ts-feedbeef"


def feats(seed: int = 0, n: int = 40, d: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.fixture
def cache(tmp_path: Path) -> FeatureStatsCache:
    return FeatureStatsCache(LocalStore(tmp_path / "store"))


def test_round_trip_computes_once(cache: FeatureStatsCache) -> None:
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return feats()

    first, hit1 = cache.get_or_compute(DATA, EXT, compute)
    second, hit2 = cache.get_or_compute(DATA, EXT, compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert np.array_equal(first.features, second.features)
    assert np.array_equal(first.mean, second.mean) and np.array_equal(first.cov, second.cov)
    assert second.mean.dtype == np.float64 and second.features.dtype == np.float32
    assert second.num_items == 40 and second.dim == 8
    assert np.allclose(second.cov, np.cov(feats().astype(np.float64), rowvar=False, bias=True))


def test_keys_separate_datasets_extractors_and_variants(cache: FeatureStatsCache) -> None:
    cache.put(FeatureStats.from_features(feats(1)), DATA, EXT)
    assert cache.key(DATA, EXT) == f"cache/feature-stats/{DATA}/{EXT}.npz"
    assert cache.key(DATA, EXT, "mirror") == f"cache/feature-stats/{DATA}/{EXT}-mirror.npz"
    assert cache.get(DATA, "ts-other") is None
    assert cache.get("ds-other", EXT) is None
    assert cache.get(DATA, EXT, "mirror") is None
    assert cache.get(DATA, EXT) is not None


def test_corrupt_or_misplaced_entries_are_recomputed(cache: FeatureStatsCache) -> None:
    key = cache.key(DATA, EXT)
    cache.store.put_bytes(key, b"garbage")
    assert cache.get(DATA, EXT) is None
    stats, hit = cache.get_or_compute(DATA, EXT, feats)
    assert not hit and cache.get(DATA, EXT) is not None
    # an entry copied under another dataset's key is not trusted
    cache.store.put_bytes(cache.key("ds-else", EXT), cache.store.get_bytes(key))
    assert cache.get("ds-else", EXT) is None


def test_entries_never_need_pickle(cache: FeatureStatsCache) -> None:
    cache.put(FeatureStats.from_features(feats()), DATA, EXT)
    with np.load(cache.store.open_read(cache.key(DATA, EXT)), allow_pickle=False) as z:
        assert set(z.files) == {"mean", "cov", "features", "header"}


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "-lead"])
def test_unsafe_key_parts_are_rejected(cache: FeatureStatsCache, bad: str) -> None:
    with pytest.raises(CleftGanError):
        cache.key(bad, EXT)

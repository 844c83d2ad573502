"""End to end as the training loop will use it: dataset images -> cached real statistics,
a generator -> features, then FID and KID with the project's tiny extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics import (
    FeatureStatsCache,
    fid_kid,
    generated_features,
    load_feature_extractor,
    save_tiny_extractor,
    uint8_batches,
)
from cleftgan_hpc.storage.local import LocalStore


def blobs(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Float images [n, 3, 32, 32] in [-1, 1]: smooth random blobs, optionally brighter."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g) * 0.5 + shift
    return torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False).clamp(-1, 1)


def test_uint8_batches_from_dataset_layout() -> None:
    imgs = [np.full((5, 7, 3), i, dtype=np.uint8) for i in range(5)]
    out = list(uint8_batches(imgs, 2))
    assert [b.shape for b in out] == [(2, 3, 5, 7), (2, 3, 5, 7), (1, 3, 5, 7)]
    assert out[2].dtype == torch.uint8 and int(out[2][0, 0, 0, 0]) == 4


def test_fid_kid_end_to_end_with_the_feature_cache(tmp_path: Path) -> None:
    save_tiny_extractor(tmp_path / "tiny.pt")
    ext = load_feature_extractor(tmp_path / "tiny.pt")
    real = ((blobs(96, 0) * 127.5 + 128).clamp(0, 255).to(torch.uint8)).permute(0, 2, 3, 1).numpy()
    cache = FeatureStatsCache(LocalStore(tmp_path / "store"))
    stats, hit = cache.get_or_compute("ds-demo", ext.digest, lambda: ext.features(uint8_batches(real, 32)))
    assert not hit and stats.num_items == 96

    def same(start: int, n: int) -> torch.Tensor:
        return blobs(n, 1000 + start)

    def brighter(start: int, n: int) -> torch.Tensor:
        return blobs(n, 1000 + start, shift=0.6)

    good = fid_kid(stats, generated_features(ext, same, 96, 40), kid_num_subsets=20)
    bad = fid_kid(stats, generated_features(ext, brighter, 96, 40), kid_num_subsets=20)
    assert set(good) == {"fid", "kid"}
    assert bad["fid"] > 3 * good["fid"] and bad["kid"] > 3 * max(good["kid"], 1e-6)
    # the cached statistics give the same values as fresh ones
    again, hit = cache.get_or_compute("ds-demo", ext.digest, lambda: pytest.fail("recomputed"))
    assert hit and fid_kid(again, generated_features(ext, same, 96, 40), kid_num_subsets=20) == good


def test_generated_features_rejects_empty_requests(tmp_path: Path) -> None:
    save_tiny_extractor(tmp_path / "tiny.pt")
    ext = load_feature_extractor(tmp_path / "tiny.pt")
    with pytest.raises(CleftGanError):
        generated_features(ext, lambda s, n: blobs(n, s), 0, 8)

"""Glue for the training loop and the evaluate stage: features of a real set and of a generator,
FID/KID values, and the full-precision math every measurement runs under."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics.cache import FeatureStats
from cleftgan_hpc.metrics.features import FeatureExtractor, images_to_uint8
from cleftgan_hpc.metrics.fid import feature_mean_cov, fid_from_features, frechet_distance
from cleftgan_hpc.metrics.kid import kid_from_features


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """No TF32 inside: on Ampere and newer GPUs PyTorch runs convolutions in TF32 by default (10
    mantissa bits), which drowns PPL's 1e-4 step in rounding (the reference turns it off for
    its metrics). The previous settings come back afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def uint8_batches(images: Iterable[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """Dataset images (uint8 [H, W, C], as ``Dataset`` yields them) -> uint8 [n, C, H, W] batches."""
    batch: list[np.ndarray] = []
    for img in images:
        batch.append(img)
        if len(batch) == batch_size:
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
            batch = []
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


def generated_features(
    extractor: FeatureExtractor,
    generate: Callable[[int, int], torch.Tensor],
    num_images: int,
    batch_size: int,
    first: int = 0,
) -> np.ndarray:
    """Features [num_images, D] of generated images ``first .. first + num_images - 1``.

    ``generate(start, n)`` returns images ``start .. start + n - 1`` as float [n, C, H, W] in
    [-1, 1] (seeding by index keeps the set the same across snapshots and world sizes).
    """
    if num_images < 1 or batch_size < 1:
        raise CleftGanError(f"need num_images >= 1 and batch_size >= 1, got {num_images}, {batch_size}")

    def batches() -> Iterator[torch.Tensor]:
        for start in range(first, first + num_images, batch_size):
            n = min(batch_size, first + num_images - start)
            with torch.no_grad():
                yield images_to_uint8(generate(start, n))

    return extractor.features(batches())


def fid_kid(
    real: FeatureStats,
    fake_features: np.ndarray,
    kid_num_subsets: int = 100,
    kid_max_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """{"fid": ..., "kid": ...} of generated features [N, D] against cached real statistics."""
    fake = np.asarray(fake_features, dtype=np.float64)
    if min(real.num_items, len(fake)) < real.dim:  # rank-deficient: the exact feature route is cheaper
        fid = fid_from_features(real.features, fake)
    else:
        fid = frechet_distance(real.mean, real.cov, *feature_mean_cov(fake))
    return {
        "fid": fid,
        "kid": kid_from_features(real.features, fake_features, kid_num_subsets, kid_max_subset_size, seed),
    }

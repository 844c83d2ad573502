"""Kernel Inception Distance (Binkowski et al. 2018), as the StyleGAN metrics compute it.

The unbiased estimate of the squared MMD with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over ``num_subsets`` random subsets of
m = min(N_real, N_fake, max_subset_size) items drawn without replacement from each set:

    MMD_u^2 = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2

Unbiased, so unlike FID it does not grow for small sets; it can be slightly negative.
Subsets come from an explicit seed, so the value is reproducible.
"""

from __future__ import annotations

import numpy as np

from cleftgan_hpc.errors import CleftGanError


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-size samples ``x``, ``y`` [m, d] with the cubic kernel."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, d = x.shape
    if y.shape != (m, d) or m < 2:
        raise CleftGanError(f"MMD needs two [m, d] samples with m >= 2, got {x.shape} and {y.shape}")
    return _mmd2_from_kernels((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)


# Up to this many items per set, the kernel matrices are computed once for the whole sets
# (3 matmuls instead of 3 per subset; at most 3 x 128 MiB) and subsets index into them.
PRECOMPUTE_MAX_ITEMS = 4096


def _mmd2_from_kernels(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m = kxx.shape[0]
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def kid_subsets(
    real: np.ndarray, fake: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> np.ndarray:
    """MMD^2 of each subset, float64 [num_subsets]; KID is their mean."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise CleftGanError(f"KID needs two [N, D] feature sets of one D, got {real.shape} and {fake.shape}")
    m = min(real.shape[0], fake.shape[0], max_subset_size)
    if m < 2:
        raise CleftGanError(f"KID needs at least 2 items in each set, got {real.shape[0]} and {fake.shape[0]}")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    out = np.empty(num_subsets)
    if max(real.shape[0], fake.shape[0]) <= PRECOMPUTE_MAX_ITEMS:
        k_ff = (fake @ fake.T / d + 1) ** 3  # [Nf, Nf]
        k_rr = (real @ real.T / d + 1) ** 3  # [Nr, Nr]
        k_fr = (fake @ real.T / d + 1) ** 3  # [Nf, Nr]
        for i in range(num_subsets):
            fi = rng.choice(fake.shape[0], m, replace=False)
            ri = rng.choice(real.shape[0], m, replace=False)
            out[i] = _mmd2_from_kernels(k_ff[np.ix_(fi, fi)], k_rr[np.ix_(ri, ri)], k_fr[np.ix_(fi, ri)])
        return out
    for i in range(num_subsets):
        x = fake[rng.choice(fake.shape[0], m, replace=False)]
        y = real[rng.choice(real.shape[0], m, replace=False)]
        out[i] = polynomial_mmd2_unbiased(x, y)
    return out


def kid_from_features(
    real: np.ndarray, fake: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """KID between real [N1, D] and generated [N2, D] features (the reference's defaults)."""
    return float(kid_subsets(real, fake, num_subsets, max_subset_size, seed).mean())

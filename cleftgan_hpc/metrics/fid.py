"""Frechet distance between Gaussian fits of two feature sets (Heusel et al. 2017).

    FID = |mu_1 - mu_2|^2 + Tr(S_1) + Tr(S_2) - 2 Tr(sqrtm(S_1 S_2))

with biased (1/N) covariances, as the StyleGAN metrics compute them. No scipy: S_1 S_2 is
similar to the symmetric PSD matrix M = S_1^(1/2) S_2 S_1^(1/2), so Tr(sqrtm(S_1 S_2)) is the
sum of square roots of M's eigenvalues. Both steps are symmetric eigendecompositions (eigh),
which are backward stable, and tiny negative eigenvalues that rounding produces in the
singular case (fewer images than dimensions, e.g. 514 faces vs 2048 Inception features) are
clipped to 0, where a general sqrtm of the non-symmetric product would return complex noise.
"""

from __future__ import annotations

import numpy as np

from cleftgan_hpc.errors import CleftGanError


def feature_mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] -> (mean [D], biased covariance [D, D]), both float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise CleftGanError(f"features must be a non-empty [N, D] array, got shape {x.shape}")
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, (xc.T @ xc) / x.shape[0]


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix [D, D] (float64)."""
    a = np.asarray(a, dtype=np.float64)
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD ``sigma1``, ``sigma2`` [D, D]."""
    s1 = sqrtm_psd(sigma1)
    m = s1 @ np.asarray(sigma2, dtype=np.float64) @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID from two (mean [D], covariance [D, D]) pairs; >= 0."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise CleftGanError(
            f"FID needs means [D] and covariances [D, D] of one D; got {mu1.shape}, {sigma1.shape}, "
            f"{mu2.shape}, {sigma2.shape}"
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)  # rounding can dip a hair below 0 for identical sets


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets [N1, D] and [N2, D].

    With fewer items than dimensions (514 real faces vs 2048 Inception features) the
    covariances are rank-deficient and a smaller exact route exists: with centred features
    X1, X2, the non-zero eigenvalues of S1 S2 = X1'X1 X2'X2 / (N1 N2) are the squared singular
    values of X1 X2' / sqrt(N1 N2), so Tr(sqrtm(S1 S2)) is that [N1, N2] matrix's nuclear norm.
    An SVD is backward stable and has no negative eigenvalues to clip.
    """
    x1, x2 = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1] or min(len(x1), len(x2)) < 1:
        raise CleftGanError(f"FID needs two non-empty [N, D] feature sets of one D, got {x1.shape} and {x2.shape}")
    (n1, d), n2 = x1.shape, x2.shape[0]
    if min(n1, n2) >= d:
        return frechet_distance(*feature_mean_cov(x1), *feature_mean_cov(x2))
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    x1, x2 = x1 - mu1, x2 - mu2
    cross = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    diff = mu1 - mu2
    value = diff @ diff + (x1 * x1).sum() / n1 + (x2 * x2).sum() / n2 - 2 * cross
    return max(float(value), 0.0)

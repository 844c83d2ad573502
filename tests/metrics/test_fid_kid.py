"""FID and KID against direct computations (scipy's sqrtm where available)."""

from __future__ import annotations

import numpy as np
import pytest

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics.fid import (
    feature_mean_cov,
    fid_from_features,
    frechet_distance,
    sqrtm_psd,
    trace_sqrt_product,
)
from cleftgan_hpc.metrics.kid import kid_from_features, kid_subsets, polynomial_mmd2_unbiased


def features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated dimensions, like real features
    return (rng.normal(size=(n, d)) @ mix + shift).astype(np.float32)


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The reference's formula: scipy.linalg.sqrtm of the product, real part."""
    linalg = pytest.importorskip("scipy.linalg")
    mu1, mu2 = a.mean(0).astype(np.float64), b.mean(0).astype(np.float64)
    s1 = np.cov(a.astype(np.float64), rowvar=False, bias=True)
    s2 = np.cov(b.astype(np.float64), rowvar=False, bias=True)
    covmean = linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.real(np.trace(covmean)))


def test_mean_and_biased_covariance() -> None:
    x = features(300, 8, 0)
    mu, cov = feature_mean_cov(x)
    assert np.allclose(mu, x.mean(0)) and np.allclose(cov, np.cov(x, rowvar=False, bias=True))
    assert mu.dtype == cov.dtype == np.float64


def test_sqrtm_psd_squares_back() -> None:
    a = np.cov(features(200, 16, 1), rowvar=False)
    r = sqrtm_psd(a)
    assert np.allclose(r @ r, a, atol=1e-10) and np.allclose(r, r.T)


@pytest.mark.parametrize(("n", "d", "shift"), [(600, 32, 0.3), (400, 64, 0.0), (2000, 16, 1.0)])
def test_fid_matches_scipy_sqrtm(n: int, d: int, shift: float) -> None:
    a, b = features(n, d, 1), features(n + 50, d, 2, shift)
    ours, ref = fid_from_features(a, b), reference_fid(a, b)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-8)


def test_fid_matches_scipy_when_covariances_are_singular() -> None:
    """Fewer items than dimensions (514 faces vs 2048 features): the rank-deficient case."""
    a, b = features(40, 64, 3), features(50, 64, 4, 0.2)
    assert fid_from_features(a, b) == pytest.approx(reference_fid(a, b), rel=1e-5)


def test_rank_deficient_route_equals_the_covariance_route() -> None:
    a, b = features(30, 48, 15), features(45, 48, 16, 0.3)
    # the covariance route sums square roots of rounding-level eigenvalues (~1e-16 -> 1e-8
    # each) where the exact answer has zeros, so it is the less precise of the two
    assert fid_from_features(a, b) == pytest.approx(
        frechet_distance(*feature_mean_cov(a), *feature_mean_cov(b)), rel=1e-7)


def test_fid_of_a_set_with_itself_is_zero() -> None:
    a = features(500, 64, 5)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    singular = features(30, 64, 6)
    assert fid_from_features(singular, singular) == pytest.approx(0.0, abs=1e-8)


def test_fid_closed_form_for_diagonal_gaussians() -> None:
    """Independent check without scipy: for diagonal covariances sqrtm is elementwise."""
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    want = 5.0 + sum((np.sqrt(np.diag(s1)) - np.sqrt(np.diag(s2))) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want)
    assert trace_sqrt_product(s1, s2) == pytest.approx(2 + 2 + 1.5)


def test_fid_shape_errors_are_clear() -> None:
    with pytest.raises(CleftGanError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel, written out term by term."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / d + 1) ** 3)

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_mmd2_matches_the_term_by_term_formula() -> None:
    x, y = features(25, 6, 7), features(25, 6, 8, 0.5)
    assert polynomial_mmd2_unbiased(x, y) == pytest.approx(direct_mmd2(x, y), rel=1e-10)


def test_kid_subsets_follow_the_reference_procedure() -> None:
    real, fake = features(70, 6, 9), features(50, 6, 10, 0.4)
    got = kid_subsets(real, fake, num_subsets=5, max_subset_size=30, seed=3)
    rng = np.random.default_rng(3)  # same draws, in the same order: fake subset, then real
    want = []
    for _ in range(5):
        x = fake[rng.choice(50, 30, replace=False)]
        y = real[rng.choice(70, 30, replace=False)]
        want.append(direct_mmd2(x, y))
    assert np.allclose(got, want, rtol=1e-10)
    assert kid_from_features(real, fake, 5, 30, 3) == pytest.approx(np.mean(want))


def test_precomputed_kernels_give_the_per_subset_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from cleftgan_hpc.metrics import kid

    real, fake = features(60, 6, 17), features(80, 6, 18, 0.2)
    fast = kid_subsets(real, fake, num_subsets=4, max_subset_size=40, seed=1)
    monkeypatch.setattr(kid, "PRECOMPUTE_MAX_ITEMS", 0)
    assert np.allclose(fast, kid_subsets(real, fake, num_subsets=4, max_subset_size=40, seed=1), rtol=1e-12)


def test_kid_subset_size_is_capped_by_the_smaller_set() -> None:
    real, fake = features(20, 4, 11), features(12, 4, 12)
    # every subset of the fake set is all of it; the real subset has 12 items
    vals = kid_subsets(real, fake, num_subsets=3, max_subset_size=1000)
    assert vals.shape == (3,) and np.isfinite(vals).all()


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    pool = features(800, 16, 14)  # one distribution, split in two
    same = kid_from_features(pool[:400], pool[400:], num_subsets=20, max_subset_size=200)
    shifted = kid_from_features(pool[:400], pool[400:] + 0.5, num_subsets=20, max_subset_size=200)
    assert abs(same) < 0.01 and shifted > 20 * max(abs(same), 1e-4)


def test_kid_needs_two_items() -> None:
    with pytest.raises(CleftGanError, match="at least 2"):
        kid_from_features(features(1, 4, 0), features(5, 4, 1))

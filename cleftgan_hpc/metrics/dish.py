"""DISH: the divergence between histograms of cleft-severity scores of real and generated faces.

CleftGAN (arXiv 2310.07969) scores every image with a separate severity model (a TorchScript
file, ``cleftgan_hpc.metrics.severity``, or the severity index, ``cleftgan_hpc.severity``, which
normalises faces with a normal-face generator), histograms the real and the generated scores, and reports
a divergence between the two histograms (the journal version calls it the "Divergence Index of
Normality"). The paper does not publish its binning or divergence, so both are settings here.

Defaults, and why:

- 20 equal-width bins over the *real* scores' range (min..max). The edges depend on the real
  set only, so values for several generators against one real set use the same bins.
  Scores outside the edges are counted in the end bins, never dropped: a generator that
  overshoots the real range shows up as mass in an extreme bin instead of vanishing.
  Pass ``value_range`` (e.g. ``(0, 1)`` for a model with bounded scores) to fix the bins.
- Jensen-Shannon divergence in bits: symmetric, bounded in [0, 1] (1 for disjoint
  histograms), and finite with empty bins, so it needs no smoothing.
- Also available: ``kl`` (KL(real || generated), in bits, with additive ``smoothing`` per bin
  then renormalisation so empty generated bins stay finite), ``hellinger`` distance and
  total variation ``tv`` (both in [0, 1]).

Histograms of finite samples differ by chance, so two samples of one distribution give
DISH > 0 (more so with many bins and few images): compare values at equal sample sizes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from cleftgan_hpc.errors import CleftGanError

Divergence = Literal["js", "kl", "hellinger", "tv"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)

DEFAULT_BINS = 20
DEFAULT_SMOOTHING = 1e-6
SUM_TOLERANCE = 1e-6  # how far from 1 a histogram's sum may be (float rounding of counts / n)


def _scores(values: Any, what: str) -> np.ndarray:
    """A finite, non-empty float64 vector from [N] or [N, 1] scores."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise CleftGanError(f"{what} must be a vector of scores [N] (or [N, 1]), got shape {a.shape}")
    if a.size == 0:
        raise CleftGanError(f"no {what}: DISH needs at least one score on each side")
    if not np.all(np.isfinite(a)):
        raise CleftGanError(f"{what} contain {int((~np.isfinite(a)).sum())} NaN or infinite value(s)")
    return a


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise CleftGanError(f"bins must be an integer >= 2, got {bins!r}")
    return int(bins)


def bin_edges(real_scores: Any, bins: int, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``bins + 1`` equal-width edges over ``value_range``, or by default over the real scores'
    min..max. A degenerate default range (all real scores equal) is widened by 0.1% of the
    value (at least 0.001) each way, so the bins have a width."""
    n = _check_bins(bins)
    if value_range is not None:
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError) as e:
            raise CleftGanError(f"value_range must be two numbers (low, high), got {value_range!r}") from e
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise CleftGanError(f"value_range must be finite with low < high, got {value_range!r}")
    else:
        real = _scores(real_scores, "real scores")
        lo, hi = float(real.min()), float(real.max())
        if hi - lo <= 1e-12 * max(1.0, abs(lo)):
            pad = max(abs(lo) * 1e-3, 1e-3)
            lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, n + 1)


def histogram(scores: Any, edges: Any) -> np.ndarray:
    """The fraction of ``scores`` in each bin of ``edges`` (float64, sums to 1).

    Scores below the first edge count in the first bin and scores above the last edge in the
    last bin (they are clipped, never dropped), so every score is counted. Bins are half-open
    [a, b) except the last, which includes its upper edge (numpy's convention).
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or not np.all(np.diff(e) > 0):
        raise CleftGanError("histogram edges must be a finite, strictly increasing vector of at least 2 values")
    s = _scores(scores, "scores")
    counts, _ = np.histogram(np.clip(s, e[0], e[-1]), bins=e)
    return counts.astype(np.float64) / s.size


def _distribution(h: Any, what: str) -> np.ndarray:
    a = np.asarray(h, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise CleftGanError(f"{what} must be a non-empty vector of bin probabilities, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise CleftGanError(f"{what} must hold finite, non-negative probabilities")
    total = float(a.sum())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise CleftGanError(f"{what} must sum to 1 (probabilities, not counts), sums to {total:g}")
    return a / total  # remove the rounding the tolerance allows


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    """sum p log2(p / q) over bins with p > 0 (0 log 0 = 0); inf where q = 0 < p."""
    m = p > 0
    if np.any(q[m] == 0):
        return math.inf
    return float(np.sum(p[m] * np.log2(p[m] / q[m])))


def _divergence_value(p: np.ndarray, q: np.ndarray, kind: str, smoothing: float) -> float:
    if kind == "js":
        m = (p + q) / 2  # m > 0 wherever p or q is, so both terms are finite
        value = 0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(q, m)
        return min(max(value, 0.0), 1.0)  # clip float rounding to the exact bounds
    if kind == "kl":
        ps = (p + smoothing) / (1 + smoothing * p.size)
        qs = (q + smoothing) / (1 + smoothing * q.size)
        value = _kl_bits(ps, qs)
        if math.isinf(value):
            raise CleftGanError(
                "KL(real || generated) is infinite: generated scores leave bins empty that real scores "
                "fill; use smoothing > 0 or the js divergence"
            )
        return max(value, 0.0)
    if kind == "hellinger":
        # sqrt(1/2 sum (sqrt p - sqrt q)^2): the same as sqrt(1 - sum sqrt(p q)) without the
        # cancellation that form suffers for nearly equal histograms
        return min(math.sqrt(0.5 * float(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2))), 1.0)
    if kind == "tv":
        return min(0.5 * float(np.sum(np.abs(p - q))), 1.0)
    raise CleftGanError(f"unknown divergence {kind!r}: expected one of {', '.join(DIVERGENCES)}")


def divergence(p: Any, q: Any, kind: Divergence = "js", smoothing: float = DEFAULT_SMOOTHING) -> float:
    """The divergence of histogram ``q`` (generated) from ``p`` (real); both probabilities per bin.

    ``js``: Jensen-Shannon divergence in bits, in [0, 1]. ``kl``: KL(p || q) in bits after adding
    ``smoothing`` to every bin of both and renormalising (``smoothing`` is used by kl only).
    ``hellinger``: Hellinger distance in [0, 1]. ``tv``: total variation distance in [0, 1].
    """
    if kind not in DIVERGENCES:
        raise CleftGanError(f"unknown divergence {kind!r}: expected one of {', '.join(DIVERGENCES)}")
    if (
        isinstance(smoothing, bool)
        or not isinstance(smoothing, numbers.Real)
        or not (math.isfinite(smoothing) and smoothing >= 0)
    ):
        raise CleftGanError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
    pp = _distribution(p, "real histogram")
    qq = _distribution(q, "generated histogram")
    if pp.shape != qq.shape:
        raise CleftGanError(f"histograms have different numbers of bins: {pp.size} real, {qq.size} generated")
    return _divergence_value(pp, qq, kind, float(smoothing))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)  # a private copy, so the result cannot change under its owner
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)  # eq=False: == on numpy fields would be ambiguous
class DishResult:
    """One DISH value with what it was computed from (edges and both histograms)."""

    value: float
    divergence: str
    edges: np.ndarray
    real_hist: np.ndarray
    fake_hist: np.ndarray
    real_mean: float  # mean severity score of the real images
    fake_mean: float  # and of the generated ones: shows the direction a divergence hides

    def to_json(self) -> dict[str, Any]:
        """Plain floats and lists, for json.dumps and metric reports."""
        return {
            "value": float(self.value),
            "divergence": str(self.divergence),
            "edges": [float(v) for v in self.edges],
            "real_hist": [float(v) for v in self.real_hist],
            "fake_hist": [float(v) for v in self.fake_hist],
            "real_mean": float(self.real_mean),
            "fake_mean": float(self.fake_mean),
        }


def dish(
    real_scores: Any,
    fake_scores: Any,
    *,
    bins: int = DEFAULT_BINS,
    value_range: tuple[float, float] | None = None,
    divergence: Divergence = "js",
    smoothing: float = DEFAULT_SMOOTHING,
) -> DishResult:
    """DISH of generated severity scores against real ones (see the module docstring)."""
    real = _scores(real_scores, "real scores")
    fake = _scores(fake_scores, "generated scores")
    edges = bin_edges(real, bins, value_range)
    p, q = histogram(real, edges), histogram(fake, edges)
    value = _divergence_checked(p, q, divergence, smoothing)
    return DishResult(
        value=value,
        divergence=str(divergence),
        edges=_frozen(edges),
        real_hist=_frozen(p),
        fake_hist=_frozen(q),
        real_mean=float(real.mean()),
        fake_mean=float(fake.mean()),
    )


_divergence_checked = divergence  # dish's `divergence` parameter shadows the function

"""How well the severity index agrees with ratings of the same faces.

The severity paper validated its index against human ratings (Pearson r = 0.89 over 125
faces); a user with ratings of their own, or the demo with the severity it drew, checks ours the
same way. Ratings come as a CSV naming each image; images the CSV does not name are left out,
and a rating that is not a number is an error naming its row.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from cleftgan_hpc.errors import CleftGanError

MIN_PAIRS = 3  # fewer rated images say nothing about a correlation


def read_ratings(path: Path, column: str, name_column: str = "file") -> dict[str, float]:
    """{image name: rating} from a CSV with a ``name_column`` and a ``column`` of numbers."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return _parse_ratings(csv.DictReader(f), path.name, column, name_column)
    except UnicodeDecodeError:
        raise CleftGanError(f"{path.name}: not a UTF-8 text file") from None


def _parse_ratings(reader: csv.DictReader, name: str, column: str, name_column: str) -> dict[str, float]:
    fields = reader.fieldnames or []
    for needed in (name_column, column):
        if needed not in fields:
            raise CleftGanError(f"{name}: no {needed!r} column (it has {', '.join(fields) or 'none'})")
    ratings: dict[str, float] = {}
    for line, row in enumerate(reader, start=2):
        text = (row.get(column) or "").strip()
        try:
            value = float(text)
        except ValueError:
            raise CleftGanError(f"{name}:{line}: {column} {text[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise CleftGanError(f"{name}:{line}: {column} is {text[:40]!r}, not a finite number")
        ratings[row[name_column] or ""] = value
    return ratings


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values), dtype=np.float64)
    ranked[order] = np.arange(1, len(values) + 1)
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    for start, n in zip(first, counts, strict=True):
        if n > 1:
            ranked[order[start : start + n]] = start + (n + 1) / 2
    return ranked


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(ranks(x), ranks(y))


def agreement(scores: np.ndarray, ratings: np.ndarray) -> dict[str, object]:
    """Pearson and Spearman correlations, and the mean score per distinct rating when there are
    few of them (groups, e.g. none / incomplete / complete)."""
    if len(scores) < MIN_PAIRS:
        raise CleftGanError(f"only {len(scores)} scored images have a rating: at least {MIN_PAIRS} are needed")
    if np.ptp(ratings) == 0:
        raise CleftGanError(f"every rated image has the same rating ({ratings[0]:g}): nothing to correlate with")
    out: dict[str, object] = {
        "pairs": len(scores),
        "pearson": pearson(scores, ratings),
        "spearman": spearman(scores, ratings),
    }
    levels = np.unique(ratings)
    if len(levels) <= 10:
        out["mean_score_by_rating"] = {f"{v:g}": float(scores[ratings == v].mean()) for v in levels}
    return out


def agreement_png(scores: np.ndarray, ratings: np.ndarray, stats: dict[str, object], rating_name: str) -> bytes:
    """Score against rating, one dot per face, with both correlations in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    spread = np.ptp(ratings) if len(ratings) else 0.0
    jitter = np.random.default_rng(0).uniform(-0.01, 0.01, len(ratings)) * (spread or 1.0)  # ties stay visible
    ax.scatter(ratings + jitter, scores, s=14, alpha=0.7)
    ax.set_xlabel(rating_name)
    ax.set_ylabel("severity index")
    ax.set_title(f"{stats['pairs']} faces: Spearman {stats['spearman']:.2f}, Pearson {stats['pearson']:.2f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

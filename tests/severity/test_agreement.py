"""Agreement of the severity index with ratings: the correlations and the ratings CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.severity.agreement import agreement, ranks, read_ratings


def test_ranks_share_ties() -> None:
    np.testing.assert_array_equal(ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4, 1, 4, 2, 4])


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_and_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ratings = rng.integers(0, 3, 40).astype(float)  # three groups: many ties, as the demo's
    scores = ratings + rng.normal(0, 1.0, 40)
    out = agreement(scores, ratings)
    assert out["spearman"] == pytest.approx(stats.spearmanr(scores, ratings).statistic, abs=1e-12)
    assert out["pearson"] == pytest.approx(stats.pearsonr(scores, ratings).statistic, abs=1e-12)
    assert set(out["mean_score_by_rating"]) == {"0", "1", "2"}
    assert out["pairs"] == 40


def test_too_few_pairs_are_refused() -> None:
    with pytest.raises(CleftGanError, match="only 2 scored images have a rating"):
        agreement(np.array([1.0, 2.0]), np.array([0.0, 1.0]))


def test_ratings_csv_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("file,severity\na.png,0.5\nb.png,high\n")
    with pytest.raises(CleftGanError, match=r"labels.csv:3: severity 'high' is not a number"):
        read_ratings(path, "severity")
    path.write_text("file,group\na.png,1\n")
    with pytest.raises(CleftGanError, match="no 'severity' column"):
        read_ratings(path, "severity")
    path.write_text("file,severity\na.png,0.5\nb.png,1\n")
    assert read_ratings(path, "severity") == {"a.png": 0.5, "b.png": 1.0}


def test_equal_ratings_and_undecodable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CleftGanError, match=r"same rating \(1\): nothing to correlate"):
        agreement(np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 1.0]))
    path = tmp_path / "labels.csv"
    path.write_bytes(b"file,severity\n\xff\xfe,1\n")
    with pytest.raises(CleftGanError, match="not a UTF-8 text file"):
        read_ratings(path, "severity")

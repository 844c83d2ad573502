"""The image maths of the severity index: colour transform, difference, erosion, scores, peaks,
and the adaptation's loss mask."""

from __future__ import annotations

import pytest
import torch

from cleftgan_hpc.severity.adapt import keep_mask
from cleftgan_hpc.severity.heatmap import (
    default_erosion_radius,
    difference_map,
    erode,
    heat_maps,
    peaks,
    reduce_scores,
    region_mask,
    to_ycbcr,
)


def test_ycbcr_is_bt601_full_range() -> None:
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]])[:, :, None, None]
    ycc = to_ycbcr(rgb)[:, :, 0, 0]
    assert ycc[0].tolist() == pytest.approx([1.0, 0.5, 0.5], abs=1e-6)  # white: full Y, neutral chroma
    assert ycc[1].tolist() == pytest.approx([0.0, 0.5, 0.5], abs=1e-6)
    assert ycc[2].tolist() == pytest.approx([0.299, 0.5 - 0.168736, 1.0], abs=1e-6)  # red: Cr at its top
    assert ycc[3].tolist() == pytest.approx([0.5, 0.5, 0.5], abs=1e-6)
    grey = torch.rand(2, 1, 4, 4)
    assert torch.equal(to_ycbcr(grey), grey)  # grey images are their own Y


def test_difference_weights_channels() -> None:
    a = torch.zeros(1, 3, 2, 2)
    b = a.clone()
    b[0, :, 0, 0] = 0.5  # a grey step: Y only
    d = difference_map(a, b, "ycbcr", (1.0, 1.0, 1.0))
    assert d[0, 0, 0].item() == pytest.approx(0.5, abs=1e-6) and d[0, 1, 1].item() == 0
    assert difference_map(a, b, "ycbcr", (0.0, 1.0, 1.0))[0, 0, 0].item() == pytest.approx(0, abs=1e-6)
    assert difference_map(a, b, "rgb", (1.0, 1.0, 1.0))[0, 0, 0].item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        difference_map(a, torch.zeros(1, 3, 2, 3))


def test_erosion_removes_thin_lines_and_keeps_blobs() -> None:
    m = torch.zeros(1, 16, 16)
    m[0, 2, :] = 1.0  # a one-pixel line: a misplaced edge
    m[0, 8:13, 4:9] = 1.0  # a 5x5 blob: an anomaly
    e = erode(m, 1)
    assert e[0, 2].max() == 0  # the line is gone
    assert e[0, 9:12, 5:8].min() == 1 and e[0, 8, 4] == 0  # the blob's core stays, its rim goes
    assert torch.equal(erode(m, 0), m)
    assert (default_erosion_radius(1024), default_erosion_radius(256), default_erosion_radius(128)) == (4, 1, 0)


def test_scores_and_peaks() -> None:
    heat = torch.zeros(2, 10, 10)
    heat[0, 7, 3] = 1.0
    heat[1] = 0.1
    assert reduce_scores(heat, "mean", 0.01).tolist() == pytest.approx([0.01, 0.1])
    assert reduce_scores(heat, "top_mean", 0.01).tolist() == pytest.approx([1.0, 0.1])  # 1 pixel of 100
    assert reduce_scores(heat, "top_mean", 0.02).tolist() == pytest.approx([0.5, 0.1])
    assert peaks(heat)[0].tolist() == pytest.approx([0.75, 0.35])  # row, column of pixel centres
    # a region: only the lower half is scored, and the peak is sought there
    assert reduce_scores(heat, "mean", 0.01, (0.0, 0.5, 1.0, 1.0))[0].item() == pytest.approx(1 / 50)
    maps = heat_maps(torch.zeros(1, 3, 10, 10), torch.zeros(1, 3, 10, 10), "ycbcr", (1, 1, 1), 0, "top_mean", 0.01,
                     (0.0, 0.5, 1.0, 1.0))
    assert maps.peaks[0, 0].item() > 0.5
    with pytest.raises(ValueError, match="no pixel"):
        region_mask(10, 10, (0.0, 0.0, 0.01, 0.01), torch.device("cpu"))


def test_keep_mask_ignores_the_worst_fraction() -> None:
    error = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    error[0, 40:46, 30:34] = 1.0  # where the projection failed
    keep = keep_mask(error, 0.05)
    assert keep.shape == (1, 1, 64, 64)
    assert keep[0, 0, 40:46, 30:34].max() == 0  # the anomaly is ignored
    assert keep.mean().item() == pytest.approx(0.95, abs=0.01)
    assert keep_mask(error, 0.0).min() == 1

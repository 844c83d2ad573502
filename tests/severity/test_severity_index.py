"""The severity index on faces it can judge: demo faces with a drawn notch against a generator of
normal demo faces (``linear_faces.LinearFaces``), and its refusals of what it cannot judge."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from linear_faces import RES, LinearFaces, small_options, to_nchw

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.severity.scorer import ALIGNMENT_WARN, SeverityIndex, alignment


@pytest.fixture(scope="module")
def scored(normal_g: LinearFaces, cleft_faces: dict[float, np.ndarray]) -> dict[float, Any]:
    """severity -> IndexResult (with heat maps) under the default options, fewer steps."""
    index = SeverityIndex(normal_g, small_options())
    return {sev: index.score(to_nchw(faces), keep_maps=True) for sev, faces in cleft_faces.items()}


def test_a_notch_scores_higher_than_the_same_face_without(scored: dict[float, Any]) -> None:
    clean, incomplete, complete = (scored[s].scores for s in (0.0, 0.5, 1.0))
    assert np.all(complete > clean), (clean, complete)
    assert np.all(incomplete > clean), (clean, incomplete)
    assert np.all(complete > incomplete)  # the longer notch, the higher
    assert np.all(complete - clean > 0.1 * clean)  # clearly, not by rounding


def test_the_heat_map_peaks_in_the_notch(scored: dict[float, Any], cleft_faces: dict[float, np.ndarray]) -> None:
    """Where the drawn notch is, found from the drawings themselves: the pixels the notch changed."""
    changed = np.abs(cleft_faces[1.0].astype(int) - cleft_faces[0.0].astype(int)).max(axis=3) > 40  # [N, H, W]
    for i, (row, col) in enumerate(scored[1.0].peaks):
        r, c = int(row * RES), int(col * RES)
        assert changed[i, max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3].any(), (i, r, c)
        assert 0.55 < row < 0.8 and 0.35 < col < 0.65  # below the nose, at the upper lip
    heat = scored[1.0].heat
    assert heat is not None and heat.shape == (3, RES, RES)
    assert scored[1.0].normalised is not None and scored[1.0].normalised.shape == (3, RES, RES, 3)


def test_the_normalised_face_has_no_notch(scored: dict[float, Any], cleft_faces: dict[float, np.ndarray]) -> None:
    """The normalised version of a notched face is closer to the face without the notch than to the notch."""
    norm = scored[1.0].normalised.astype(float)
    to_clean = np.abs(norm - cleft_faces[0.0]).mean()
    to_notched = np.abs(norm - cleft_faces[1.0]).mean()
    assert to_clean < to_notched


def _gap(index: SeverityIndex, clean: np.ndarray, notched: np.ndarray) -> float:
    s = index.score(to_nchw(np.stack([clean, notched]))).scores
    return float(s[1] - s[0])


@pytest.mark.slow
def test_adaptation_does_not_learn_the_notch(normal_g: LinearFaces, cleft_faces: dict[float, np.ndarray]) -> None:
    """Strong adaptation (enough to reproduce the whole image) keeps the notch visible because of
    the ignored pixels and the pull; without them the same adaptation erases it, so the test
    can tell the difference."""
    clean, notched = cleft_faces[0.0][0], cleft_faces[1.0][0]
    strong = {"steps": 50, "lr": 0.01}
    without = _gap(SeverityIndex(normal_g, small_options(adaptation={"steps": 0})), clean, notched)
    default = _gap(SeverityIndex(normal_g, small_options(adaptation={"steps": 30})), clean, notched)
    guarded = _gap(SeverityIndex(normal_g, small_options(adaptation=strong)), clean, notched)
    free = _gap(SeverityIndex(normal_g, small_options(adaptation={**strong, "pull": 0, "ignore_fraction": 0})),
                clean, notched)
    assert without > 0
    assert default > 0.8 * without and guarded > 0.8 * without, (without, default, guarded)
    assert free < 0.2 * without, (without, free)


def test_adaptation_improves_the_rest_and_stays_near_the_original_weights(
    normal_g: LinearFaces, cleft_faces: dict[float, np.ndarray]
) -> None:
    opts = small_options(adaptation={"steps": 40, "lr": 0.003, "pull": 0.1})
    index = SeverityIndex(normal_g, opts)
    original = [p.detach().clone() for p in normal_g.synthesis.parameters()]
    result = index.score(to_nchw(cleft_faces[0.5][:1]))
    assert result.adaptation_loss[0] < result.projection_loss[0]
    a = opts.adaptation
    assert index._adapter is not None and index._adapter.max_drift() <= 3.2 * a.lr * (1 - a.pull) / a.pull
    for p, p0 in zip(normal_g.synthesis.parameters(), original, strict=True):
        assert torch.equal(p, p0)  # the network itself is never changed


def test_scores_do_not_depend_on_the_batch(normal_g: LinearFaces, cleft_faces: dict[float, np.ndarray]) -> None:
    opts = small_options(batch=4, projection={"steps": 15}, adaptation={"steps": 2})
    faces = to_nchw(np.concatenate([cleft_faces[1.0][:2], cleft_faces[0.0][:1]]))
    together = SeverityIndex(normal_g, opts).score(faces).scores
    alone = np.array([SeverityIndex(normal_g, opts).score(f[None]).scores[0] for f in faces])
    np.testing.assert_allclose(together, alone, rtol=1e-4)
    twice = SeverityIndex(normal_g, opts).score(faces).scores
    np.testing.assert_array_equal(together, twice)  # seeded: the same images, the same scores


def test_with_a_perceptual_network(tmp_path: Any, normal_g: LinearFaces, cleft_faces: dict[float, np.ndarray]) -> None:
    from cleftgan_hpc.metrics.lpips import load_lpips, save_tiny_lpips

    save_tiny_lpips(tmp_path / "lpips.pt")
    lpips = load_lpips(tmp_path / "lpips.pt")
    index = SeverityIndex(normal_g, small_options(projection={"steps": 30}), lpips=lpips)
    s = index.score(to_nchw(np.stack([cleft_faces[0.0][0], cleft_faces[1.0][0]]))).scores
    assert s[1] > s[0]
    assert index.describe()["lpips"] == lpips.digest
    assert index.digest != SeverityIndex(normal_g, small_options(projection={"steps": 30})).digest


def test_a_stylegan2_network_is_scored(tmp_path: Any) -> None:
    from cleftgan_hpc.model.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    g = StyleGAN2Generator(16, 0, 16, 16, 3, channel_base=256, channel_max=16)
    index = SeverityIndex(g, small_options(projection={"steps": 3, "w_avg_samples": 50}, adaptation={"steps": 2}))
    images = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    result = index.score(images)
    assert result.scores.shape == (2,) and np.all(np.isfinite(result.table()))


def test_the_alignment_check(normal_g: LinearFaces, cleft_faces: dict[float, np.ndarray]) -> None:
    index = SeverityIndex(normal_g, small_options())
    assert alignment(to_nchw(cleft_faces[1.0]), index.mean_face()) > 0.8
    shifted = np.roll(cleft_faces[0.0], RES // 3, axis=1)  # faces off-centre: not aligned as the generator's
    noise = np.random.default_rng(0).integers(0, 256, (3, RES, RES, 3), dtype=np.uint8)
    assert alignment(to_nchw(shifted), index.mean_face()) < alignment(to_nchw(cleft_faces[0.0]), index.mean_face())
    assert alignment(to_nchw(noise), index.mean_face()) < ALIGNMENT_WARN


# -- what it refuses, before any work ---------------------------------------------------------

def test_images_the_network_cannot_draw_are_refused(normal_g: LinearFaces) -> None:
    index = SeverityIndex(normal_g, small_options())
    with pytest.raises(CleftGanError, match=r"64x64, the normal-face network draws 128x128"):
        index.score(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(CleftGanError, match="1 channel"):
        index.score(torch.zeros(1, 1, RES, RES, dtype=torch.uint8))
    with pytest.raises(CleftGanError, match="no images"):
        index.score(torch.zeros(0, 3, RES, RES, dtype=torch.uint8))
    with pytest.raises(CleftGanError, match="uint8"):
        index.score(torch.zeros(1, 3, RES, RES))
    assert index._stats is None  # refused before the first mapping pass


def test_a_scorer_without_a_loss_or_with_a_conditional_network_is_refused(normal_g: LinearFaces) -> None:
    with pytest.raises(CleftGanError, match="projection has no loss"):
        SeverityIndex(normal_g, small_options(projection={"pixel_weight": 0}))
    with pytest.raises(CleftGanError, match="adaptation has no loss"):
        SeverityIndex(normal_g, small_options(adaptation={"pixel_weight": 0}))
    cond = LinearFaces.__new__(LinearFaces)
    torch.nn.Module.__init__(cond)
    cond.c_dim = 3
    with pytest.raises(CleftGanError, match="conditional"):
        SeverityIndex(cond, small_options())


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="channel_weights"):
        small_options(channel_weights=[0, 0, 0])
    with pytest.raises(ValueError, match="region"):
        small_options(region=[0.5, 0.5, 0.4, 0.9])
    with pytest.raises(ValueError):
        small_options(adaptation={"ignore_fraction": 1.0})

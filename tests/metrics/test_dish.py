"""DISH: histograms of severity scores and their divergences against hand-computed values, and
the severity models behind it (loading, output checks, and the demo scorer on demo faces)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cleftgan_hpc.data.align import align_face, standardise_background
from cleftgan_hpc.data.demo_faces import draw_face, face_rng, severity_group
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics.dish import DIVERGENCES, DishResult, bin_edges, dish, divergence, histogram
from cleftgan_hpc.metrics.features import _quiet_jit, extractor_digest
from cleftgan_hpc.metrics.severity import (
    SeverityModel,
    load_severity_model,
    save_demo_severity_model,
)

# ---------------------------------------------------------------- divergences


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_identical_scores_give_zero(kind: str) -> None:
    scores = np.random.default_rng(0).normal(size=500)
    assert dish(scores, scores.copy(), divergence=kind).value == 0.0
    p = histogram(scores, bin_edges(scores, 7))
    assert divergence(p, p, kind) == 0.0


def test_disjoint_supports_are_maximally_apart() -> None:
    real, fake = [0.0, 0.05, 0.2], [0.8, 0.95, 1.0]
    for kind in ("js", "tv", "hellinger"):
        assert dish(real, fake, bins=4, value_range=(0, 1), divergence=kind).value == pytest.approx(1.0, abs=1e-12)
    # KL is unbounded: with smoothing eps it is about log2(1 / eps) bits
    kl = dish(real, fake, bins=4, value_range=(0, 1), divergence="kl").value
    assert 15 < kl < 25 and math.isfinite(kl)


P, Q = [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]


def test_js_by_hand() -> None:
    # m = (p + q) / 2 = [3/8, 3/8, 1/4]
    kl_pm = 2 * 0.5 * math.log2(0.5 / 0.375)
    kl_qm = 2 * 0.25 * math.log2(0.25 / 0.375) + 0.5 * math.log2(0.5 / 0.25)
    assert divergence(P, Q, "js") == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm, abs=1e-12)
    assert divergence(P, Q) == pytest.approx(0.31127812445913283, abs=1e-12)  # the default is js


def test_kl_by_hand() -> None:
    # KL(P || Q) = 0.5 log2(0.5 / 0.25) twice = 1 bit; the empty real bin contributes nothing
    assert divergence(P, Q, "kl", smoothing=0) == pytest.approx(1.0, abs=1e-12)
    # smoothing 0.5 on [1, 0] vs [0, 1]: [1.5, 0.5] / 2 = [3/4, 1/4] against [1/4, 3/4]
    expected = 0.75 * math.log2(3) + 0.25 * math.log2(1 / 3)
    assert divergence([1, 0], [0, 1], "kl", smoothing=0.5) == pytest.approx(expected, abs=1e-12)
    # the direction is KL(real || generated)
    assert divergence([1, 0], [0.5, 0.5], "kl", smoothing=0) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(CleftGanError, match="infinite"):
        divergence([0.5, 0.5], [1, 0], "kl", smoothing=0)


def test_hellinger_and_tv_by_hand() -> None:
    assert divergence(P, Q, "hellinger") == pytest.approx(math.sqrt(1 - 2 * math.sqrt(0.5 * 0.25)), abs=1e-12)
    assert divergence(P, Q, "tv") == pytest.approx(0.5 * (0.25 + 0.25 + 0.5), abs=1e-12)


def test_js_is_symmetric_and_kl_is_not() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(8)), rng.dirichlet(np.ones(8))
        assert divergence(p, q, "js") == pytest.approx(divergence(q, p, "js"), abs=1e-12)
        assert 0 < divergence(p, q, "js") < 1
    assert divergence(P, Q, "kl") != pytest.approx(divergence(Q, P, "kl"), rel=1e-3)


def test_kl_is_finite_with_empty_bins_thanks_to_smoothing() -> None:
    p, q = [0.5, 0.5], [1.0, 0.0]
    eps = 1e-6
    ps = [(0.5 + eps) / (1 + 2 * eps)] * 2
    qs = [(1 + eps) / (1 + 2 * eps), eps / (1 + 2 * eps)]
    expected = sum(a * math.log2(a / b) for a, b in zip(ps, qs, strict=True))
    value = divergence(p, q, "kl")  # default smoothing 1e-6
    assert math.isfinite(value) and value == pytest.approx(expected, rel=1e-9)
    # a generator that never leaves the lowest real bin, through dish
    result = dish(np.linspace(0, 1, 100), np.zeros(50), divergence="kl")
    assert math.isfinite(result.value) and result.value > 1
    assert json.loads(json.dumps(result.to_json()))["value"] == result.value


def test_divergence_validates_its_inputs() -> None:
    with pytest.raises(CleftGanError, match="different numbers of bins"):
        divergence([0.5, 0.5], [1 / 3] * 3)
    with pytest.raises(CleftGanError, match="non-negative"):
        divergence([1.5, -0.5], [0.5, 0.5])
    with pytest.raises(CleftGanError, match="sum to 1"):
        divergence([3, 2], [1, 4])  # counts, not probabilities
    with pytest.raises(CleftGanError, match="unknown divergence"):
        divergence(P, Q, "wasserstein")  # type: ignore[arg-type]
    with pytest.raises(CleftGanError, match="smoothing"):
        divergence(P, Q, "kl", smoothing=-1)


# ---------------------------------------------------------------- histograms and bins


def test_out_of_range_scores_land_in_the_end_bins() -> None:
    h = histogram([-5.0, 0.2, 0.7, 1.0, 9.0], [0.0, 0.5, 1.0])
    assert h.tolist() == [0.4, 0.6]  # -5 with 0.2; 0.7, 1.0 (the closed last edge) and 9
    result = dish([0.1, 0.9], [-100.0, 100.0, 0.5], bins=2, value_range=(0, 1))
    assert result.fake_hist.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert result.fake_hist.sum() == pytest.approx(1.0)


def test_default_range_comes_from_the_real_scores() -> None:
    real, fake = [2.0, 4.0, 6.0, 8.0], [0.0, 5.0, 50.0]
    result = dish(real, fake, bins=4)
    assert result.edges.tolist() == [2.0, 3.5, 5.0, 6.5, 8.0]
    assert result.real_hist.tolist() == [0.25, 0.25, 0.25, 0.25]
    assert result.fake_hist.tolist() == pytest.approx([1 / 3, 0, 1 / 3, 1 / 3])  # 0 and 50 clipped
    assert result.real_mean == 5.0 and result.fake_mean == pytest.approx(55 / 3)
    # all real scores equal: a narrow range around them, not a zero-width one
    edges = bin_edges([3.0, 3.0], 5)
    assert edges.size == 6 and edges[0] < 3.0 < edges[-1] and edges[-1] - edges[0] < 0.1
    assert dish([3.0, 3.0], [3.0], bins=5).value == 0.0


def test_explicit_value_range_is_honoured() -> None:
    result = dish([1.0, 2.0], [3.0, 9.0], bins=5, value_range=(0, 10))
    assert result.edges.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert result.real_hist.tolist() == [0.5, 0.5, 0, 0, 0]
    assert result.fake_hist.tolist() == [0, 0.5, 0, 0, 0.5]
    assert result.divergence == "js" and result.value == pytest.approx(
        divergence([0.5, 0.5, 0, 0, 0], [0, 0.5, 0, 0, 0.5])
    )
    with pytest.raises(CleftGanError, match="low < high"):
        dish([1.0], [1.0], value_range=(1, 1))


def test_dish_result_is_json_safe_and_frozen() -> None:
    rng = np.random.default_rng(2)
    result = dish(rng.uniform(size=200), rng.uniform(0.2, 1.2, size=150), divergence="hellinger")
    assert isinstance(result, DishResult)
    data = json.loads(json.dumps(result.to_json()))
    assert set(data) == {"value", "divergence", "edges", "real_hist", "fake_hist", "real_mean", "fake_mean"}
    assert data["divergence"] == "hellinger" and len(data["edges"]) == 21 and len(data["fake_hist"]) == 20
    assert all(type(v) is float for v in data["edges"] + data["real_hist"] + data["fake_hist"])
    assert 0 < data["value"] < 1 and data["fake_mean"] > data["real_mean"]
    with pytest.raises(ValueError):
        result.fake_hist[0] = 1.0  # the arrays are read-only, like the dataclass


@pytest.mark.parametrize(
    ("real", "fake", "kwargs", "match"),
    [
        ([], [1.0], {}, "no real scores"),
        ([1.0], [], {}, "no generated scores"),
        ([1.0, 2.0], [1.0], {"bins": 1}, "bins"),
        ([1.0, 2.0], [1.0], {"bins": True}, "bins"),
        ([1.0, float("nan")], [1.0], {}, "NaN"),
        ([[1.0, 2.0]], [1.0], {}, "vector"),
    ],
)
def test_dish_rejects_bad_inputs(real: list, fake: list, kwargs: dict, match: str) -> None:
    with pytest.raises(CleftGanError, match=match):
        dish(real, fake, **kwargs)


# ---------------------------------------------------------------- severity models


class _Mean(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3)).unsqueeze(1)  # [N, 1]


class _Nan(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full([images.shape[0]], float("nan"))


class _Pairs(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], 2)


def _script(module: torch.nn.Module, path: Path) -> Path:
    with _quiet_jit():
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_missing_severity_model_says_to_stage_it(tmp_path: Path) -> None:
    path = tmp_path / "severity.pt"
    with pytest.raises(CleftGanError) as err:
        load_severity_model(path)
    msg = str(err.value)
    assert str(path) in msg and "does not exist" in msg and "never downloaded" in msg and "stage" in msg
    with pytest.raises(CleftGanError, match="is a directory"):
        load_severity_model(tmp_path)


def test_garbage_file_is_not_torchscript(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00definitely not a model")
    with pytest.raises(CleftGanError) as err:
        load_severity_model(bad)
    assert str(bad) in str(err.value) and "not a TorchScript file" in str(err.value)


def test_nan_scores_are_an_error_naming_the_file(tmp_path: Path) -> None:
    model = load_severity_model(_script(_Nan(), tmp_path / "nan.pt"))
    with pytest.raises(CleftGanError) as err:
        model.scores(_images(3))
    assert str(tmp_path / "nan.pt") in str(err.value) and "non-finite" in str(err.value)


def test_scores_accept_n_by_1_and_check_shapes(tmp_path: Path) -> None:
    model = load_severity_model(_script(_Mean(), tmp_path / "mean.pt"))
    assert isinstance(model, SeverityModel) and model.digest == extractor_digest(tmp_path / "mean.pt")
    x = _images(4)
    scores = model.scores(x)
    assert scores.shape == (4,) and scores.dtype == np.float64
    assert scores == pytest.approx(x.double().mean(dim=(1, 2, 3)).numpy())
    both = model.scores_of([x[:3], x[3:]])
    assert both.tolist() == pytest.approx(scores.tolist())
    assert model.scores(x[:, :1]).tolist() == pytest.approx(x[:, :1].double().mean(dim=(1, 2, 3)).tolist())
    with pytest.raises(CleftGanError, match="uint8"):
        model.scores(x.float())
    with pytest.raises(CleftGanError, match="no images"):
        model.scores_of([])
    pairs = load_severity_model(_script(_Pairs(), tmp_path / "pairs.pt"))
    with pytest.raises(CleftGanError, match=r"returned \(4, 2\)"):
        pairs.scores(x)


def test_demo_scorer_is_deterministic_torchscript(tmp_path: Path) -> None:
    a = save_demo_severity_model(tmp_path / "a.pt")
    b = save_demo_severity_model(tmp_path / "elsewhere" / "b.pt")
    assert a == b == extractor_digest(tmp_path / "a.pt")
    assert (
        hashlib.sha256((tmp_path / "a.pt").read_bytes()).digest()
        == hashlib.sha256((tmp_path / "elsewhere" / "b.pt").read_bytes()).digest()
    )
    assert not list(tmp_path.rglob("*.part"))
    model = load_severity_model(tmp_path / "a.pt")
    assert isinstance(model.module, torch.jit.ScriptModule)
    for size in (16, 32, 57, 128):  # any resolution from 16
        s = model.scores(_images(3, size))
        assert s.shape == (3,) and np.all((s >= 0) & (s <= 1))
    with pytest.raises(CleftGanError, match="H and W >= 16"):
        model.scores(_images(2, 15))


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's rho)."""
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(len(a), dtype=np.float64)
    for v in np.unique(a):
        r[a == v] = r[a == v].mean()
    return r


def _demo_aligned(count: int, seed: int, resolution: int) -> tuple[torch.Tensor, np.ndarray]:
    """Demo faces through the preprocess stage's alignment and background blur (radius scaled to the size)."""
    images, severities = [], []
    for i in range(count):
        face = draw_face(face_rng(seed, i), 256)
        aligned, lm = align_face(face.image, face.landmarks, resolution)
        aligned = standardise_background(aligned, lm, "blur", blur_radius=2 * resolution / 32)
        images.append(np.asarray(aligned))
        severities.append(face.severity)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), np.array(severities)


@pytest.mark.parametrize("resolution", [32, 64])
def test_demo_scorer_tracks_the_drawn_severity(tmp_path: Path, resolution: int) -> None:
    save_demo_severity_model(tmp_path / "demo.pt")
    model = load_severity_model(tmp_path / "demo.pt")
    images, severity = _demo_aligned(40, seed=11, resolution=resolution)  # seeds 0-2 were used to design it
    scores = model.scores(images)
    rho = np.corrcoef(_ranks(scores), _ranks(severity))[0, 1]
    assert rho > 0.5, f"Spearman rho {rho:.3f} of demo scores with the drawn severity"
    groups = np.array([severity_group(s) for s in severity])
    means = [scores[groups == g].mean() for g in range(3)]
    assert means[0] < means[1] < means[2], means
    # and DISH sees a generator that only makes complete clefts as far from the real mix
    assert dish(scores, scores[groups == 2], value_range=(0, 1), bins=10).value > 0.3

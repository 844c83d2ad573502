"""PPL: the percentile-filtered mean, path lengths against an analytic linear generator, seeding,
the tiny LPIPS stand-in, loading errors, and the real generator in every mode."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cleftgan_hpc.context import StopRequested
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics.features import extractor_digest
from cleftgan_hpc.metrics.lpips import (
    LPIPS_FILENAME,
    LPIPS_URL,
    LPIPSNet,
    load_lpips,
    save_tiny_lpips,
)
from cleftgan_hpc.metrics.ppl import PPLSettings, path_lengths, ppl_from_lengths
from cleftgan_hpc.model import Generator
from cleftgan_hpc.seeds import derive_seed


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lpips") / "tiny-lpips.pt"
    save_tiny_lpips(path)
    return path


class IdentityLPIPS(torch.nn.Module):
    """LPIPS stand-in whose distance is the squared Euclidean distance of the pixels."""

    def forward(self, images: torch.Tensor, resize_images: bool = False, return_lpips: bool = False) -> torch.Tensor:
        assert not resize_images and return_lpips  # the PPL calling convention
        return images.flatten(1)


def identity_lpips() -> LPIPSNet:
    return LPIPSNet(IdentityLPIPS(), digest="identity", path="<identity>", device=torch.device("cpu"))


class Mapping(torch.nn.Module):
    """w = z @ B (broadcast to one w), recording every z and c it is given."""

    def __init__(self, B: torch.Tensor) -> None:
        super().__init__()
        self.B = B
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0, **_: object) -> torch.Tensor:
        assert truncation_psi == 1
        self.calls.append((z.clone(), c.clone()))
        return (z @ self.B)[:, None, :]  # [N, 1, 3]


class Synthesis(torch.nn.Module):
    """Linear in w: channel k of the image is w[k] times a fixed pattern P[k]."""

    def __init__(self, P: torch.Tensor) -> None:
        super().__init__()
        self.P = P  # [3, H, W]

    def forward(self, ws: torch.Tensor, **_: object) -> torch.Tensor:
        return ws[:, 0, :, None, None] * self.P  # [N, 3, H, W]


class LinearG(torch.nn.Module):
    def __init__(self, res: int, z_dim: int = 5, c_dim: int = 0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.z_dim, self.c_dim, self.img_resolution = z_dim, c_dim, res
        self.B = torch.randn([z_dim, 3], generator=g, dtype=torch.float64)
        self.P = torch.rand([3, res, res], generator=g, dtype=torch.float64)
        self.mapping = Mapping(self.B.float())
        self.synthesis = Synthesis(self.P.float())


def small_generator(c_dim: int = 0) -> Generator:
    torch.manual_seed(0)
    return Generator(16, c_dim, 16, 16, 3, channel_base=256, channel_max=16, num_fp16_res=0).eval()


# --- the percentile-filtered mean -------------------------------------------------------------


def test_ppl_drops_values_outside_the_1st_and_99th_percentile() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, size=1000)
    x[rng.choice(1000, 18, replace=False)] = np.r_[rng.uniform(1e5, 1e6, 9), rng.uniform(0, 1e-6, 9)]
    lo, hi = np.percentile(x, 1, method="lower"), np.percentile(x, 99, method="higher")
    expected = x[(x >= lo) & (x <= hi)].mean()
    assert ppl_from_lengths(x) == pytest.approx(expected, rel=1e-12)
    # 1000 values: the 1st percentile ("lower") is the 10th smallest, the 99th ("higher") the
    # 991st, so 9 values go at each end (here exactly the outliers)
    s = np.sort(x)
    assert ppl_from_lengths(x) == pytest.approx(s[9:991].mean(), rel=1e-12)
    assert 1 < ppl_from_lengths(x) < 2 and x.mean() > 1000


def test_ppl_of_few_lengths_keeps_the_extremes() -> None:
    # with 100 values or fewer "lower"/"higher" round the percentiles out to the min and max:
    # nothing is dropped, as in the reference convention (meant for 50k samples)
    x = np.array([1.0, 2.0, 3.0, 1000.0])
    assert ppl_from_lengths(x) == pytest.approx(x.mean())


def test_ppl_of_bad_input_is_a_clear_error() -> None:
    with pytest.raises(CleftGanError, match="at least 2"):
        ppl_from_lengths(np.array([1.0]))
    with pytest.raises(CleftGanError, match="NaN or infinite"):
        ppl_from_lengths(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(CleftGanError, match="NaN or infinite"):
        ppl_from_lengths(np.array([1.0, np.inf, 2.0]))


def test_settings_and_arguments_are_checked() -> None:
    for bad in (0.0, -1e-4, float("nan")):
        with pytest.raises(CleftGanError, match="epsilon"):
            PPLSettings(epsilon=bad)
    with pytest.raises(CleftGanError, match="space"):
        PPLSettings(space="x")  # type: ignore[arg-type]
    with pytest.raises(CleftGanError, match="sampling"):
        PPLSettings(sampling="middle")  # type: ignore[arg-type]
    with pytest.raises(CleftGanError, match="num_samples >= 1"):
        path_lengths(LinearG(16), identity_lpips(), 0, PPLSettings())
    with pytest.raises(CleftGanError, match="first >= 0"):
        path_lengths(LinearG(16), identity_lpips(), 4, PPLSettings(), first=-1)


def test_a_measurement_taken_in_pieces_equals_the_whole() -> None:
    """Sample i depends on (seed, i) only: pieces starting at ``first`` concatenate to the whole
    (with batch boundaries at the same samples, so even float rounding agrees)."""
    g, lp, st = LinearG(16), identity_lpips(), PPLSettings(sampling="full")
    whole = path_lengths(g, lp, 12, st, batch=4, seed=7)
    pieces = np.concatenate([path_lengths(g, lp, 8, st, batch=4, seed=7),
                             path_lengths(g, lp, 4, st, first=8, batch=4, seed=7)])
    np.testing.assert_array_equal(pieces, whole)
    assert not np.array_equal(path_lengths(g, lp, 4, st, first=4, batch=4, seed=7), whole[:4])


# --- path lengths against the analytic value --------------------------------------------------


def expected_lengths(G: LinearG, crop: bool) -> np.ndarray:
    """|d image / dt|^2 in [0, 255] units: for w = lerp(w0, w1, t) the step t -> t + eps moves w by
    eps (w1 - w0), the image channel k by eps (w1 - w0)[k] P'[k] (P' the cropped, downsampled
    pattern) and the scaled image by 127.5 times that; / eps^2 cancels the eps^2."""
    P = G.P.numpy()
    f = P.shape[1] // 256  # from the full size, crop or not (the convention)
    if crop:
        c = P.shape[1] // 8
        P = P[:, c * 3 : c * 7, c * 2 : c * 6]
    if f > 1:
        P = P.reshape(3, P.shape[1] // f, f, P.shape[2] // f, f).mean(axis=(2, 4))
    energy = (P**2).sum(axis=(1, 2))  # [3]
    out = []
    for z, _ in G.mapping.calls:  # one call per batch: [z0 of the batch; z1 of the batch]
        z0, z1 = z.double().chunk(2)
        dw = ((z1 - z0) @ G.B).numpy()  # [n, 3]
        out.append((dw**2 * energy).sum(axis=1) * 127.5**2)
    return np.concatenate(out)


@pytest.mark.parametrize(
    "res,crop,sampling",
    [(16, False, "end"), (16, True, "end"), (16, False, "full"), (512, False, "end"), (512, True, "full")],
)
def test_linear_generator_gives_the_analytic_path_length(res: int, crop: bool, sampling: str) -> None:
    G = LinearG(res)
    got = path_lengths(G, identity_lpips(), 9, PPLSettings(sampling=sampling, crop=crop), batch=4)  # type: ignore[arg-type]
    assert got.dtype == np.float64 and got.shape == (9,)
    # float32 images: a 1e-4 step loses a few digits to rounding
    np.testing.assert_allclose(got, expected_lengths(G, crop), rtol=5e-3)


def flat(res: int) -> LinearG:
    G = LinearG(res)  # B is drawn first from the same seed: the same mapping at every res
    G.P.fill_(1.0)
    G.synthesis.P.fill_(1.0)
    return G


def test_downsampling_and_crop_change_the_length_as_derived() -> None:
    # a flat pattern makes the effect plain: the length is proportional to the pixel count
    full = path_lengths(flat(512), identity_lpips(), 4, PPLSettings())
    small = path_lengths(flat(16), identity_lpips(), 4, PPLSettings())
    # 512 is box-downsampled to 256x256 (not 512x512: that would be 4x more)
    np.testing.assert_allclose(full, small * (256 * 256) / (16 * 16), rtol=5e-3)
    # the crop of 512 is 256x256, downsampled by 512 // 256 as the full image is: 128x128, a quarter
    np.testing.assert_allclose(
        path_lengths(flat(512), identity_lpips(), 4, PPLSettings(crop=True)), full / 4, rtol=5e-3
    )
    # the crop of 16 is 8x8
    small_crop = path_lengths(flat(16), identity_lpips(), 4, PPLSettings(crop=True))
    np.testing.assert_allclose(small_crop, small / 4, rtol=5e-3)


def test_lengths_do_not_depend_on_batch_size_and_change_with_the_seed() -> None:
    a = path_lengths(LinearG(16), identity_lpips(), 10, PPLSettings(sampling="full"), batch=3)
    b = path_lengths(LinearG(16), identity_lpips(), 10, PPLSettings(sampling="full"), batch=7)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    c = path_lengths(LinearG(16), identity_lpips(), 10, PPLSettings(sampling="full"), batch=3, seed=1)
    assert np.abs(a - c).min() > 1e-3 * a.max()


def mapped_z(space: str, sampling: str, n: int = 4) -> torch.Tensor:
    G = LinearG(16)
    path_lengths(G, identity_lpips(), n, PPLSettings(space=space, sampling=sampling))  # type: ignore[arg-type]
    ((z, _),) = G.mapping.calls
    return z


def test_each_sample_draws_from_its_own_documented_seed() -> None:
    z0, z1 = mapped_z("w", "end", n=6).chunk(2)
    for i in range(6):
        g = torch.Generator().manual_seed(derive_seed("ppl", 0, i))
        assert torch.equal(z0[i], torch.randn([5], generator=g)) and torch.equal(z1[i], torch.randn([5], generator=g))
    assert len({tuple(z.tolist()) for z in torch.cat([z0, z1])}) == 12  # no sample repeats another


def test_sampling_modes_share_z_and_z_space_maps_slerp_points() -> None:
    w_end, w_full = mapped_z("w", "end"), mapped_z("w", "full")
    assert torch.equal(w_end, w_full)  # w space maps z0, z1 themselves; t does not move them
    z0, z1 = w_end.chunk(2)
    z_end = mapped_z("z", "end")
    # z space maps unit vectors; at t = 0 the first is the normalised z0, the second one eps along
    assert torch.allclose(z_end.norm(dim=1), torch.ones(8), atol=1e-5)
    a, b = z_end.chunk(2)
    unit0 = z0 / z0.norm(dim=1, keepdim=True)
    assert torch.allclose(a, unit0, atol=1e-6)
    angle = torch.acos((unit0 * z1 / z1.norm(dim=1, keepdim=True)).sum(1))
    assert torch.allclose((b - a).norm(dim=1), 1e-4 * angle, rtol=1e-2)  # the arc of eps * angle
    z_full = mapped_z("z", "full")
    assert not torch.allclose(z_full[:4], unit0, atol=1e-3)  # t > 0 moves the first point


def test_conditional_generator_shares_one_real_label_per_sample() -> None:
    G = LinearG(16, c_dim=4)
    labels = np.eye(4, dtype=np.float32)[[0, 2, 3]]  # three real labels
    path_lengths(G, identity_lpips(), 12, PPLSettings(), batch=5, labels=labels)
    cs = [c for _, c in G.mapping.calls]
    assert [len(c) for c in cs] == [10, 10, 4]
    picked = []
    for c in cs:
        c0, c1 = c.chunk(2)
        assert torch.equal(c0, c1)  # both points of a sample carry the same label
        picked.append(c0)
    rows = {tuple(r.tolist()) for r in torch.cat(picked)}
    assert rows <= {tuple(r) for r in labels.tolist()} and len(rows) > 1
    with pytest.raises(CleftGanError, match="conditional"):
        path_lengths(G, identity_lpips(), 4, PPLSettings())
    with pytest.raises(CleftGanError, match=r"labels must be \[K >= 1, 4\]"):
        path_lengths(G, identity_lpips(), 4, PPLSettings(), labels=np.zeros([3, 2], np.float32))


def test_progress_is_reported_and_a_stop_request_is_honoured() -> None:
    seen: list[int] = []
    path_lengths(LinearG(16), identity_lpips(), 10, PPLSettings(), batch=4, on_samples=seen.append)
    assert seen == [4, 4, 2]
    seen.clear()
    with pytest.raises(StopRequested):
        path_lengths(
            LinearG(16),
            identity_lpips(),
            10,
            PPLSettings(),
            batch=4,
            on_samples=seen.append,
            should_stop=lambda: len(seen) >= 1,
        )
    assert seen == [4]  # stopped before the second batch


# --- the tiny LPIPS network and loading --------------------------------------------------------


def rand_images(n: int, seed: int, size: int = 24) -> torch.Tensor:
    return torch.rand([n, 3, size, size], generator=torch.Generator().manual_seed(seed)) * 255


def test_tiny_lpips_is_deterministic_and_loads_like_the_real_one(tmp_path: Path, tiny_path: Path) -> None:
    other = tmp_path / "elsewhere" / LPIPS_FILENAME
    digest = save_tiny_lpips(other)
    assert digest == extractor_digest(tiny_path)
    assert hashlib.sha256(other.read_bytes()).digest() == hashlib.sha256(tiny_path.read_bytes()).digest()
    assert not (other.parent / (other.name + ".part")).exists()
    assert save_tiny_lpips(tmp_path / "seed2.pt", seed=2) != digest
    net = load_lpips(tiny_path)
    assert isinstance(net.module, torch.jit.ScriptModule) and net.digest == digest and net.path == str(tiny_path)
    feats = net.features(rand_images(2, 0))
    assert feats.dtype == torch.float32 and feats.ndim == 2 and feats.shape[0] == 2
    assert torch.equal(feats, load_lpips(other).features(rand_images(2, 0)))


def test_tiny_lpips_is_a_distance(tiny_path: Path) -> None:
    net = load_lpips(tiny_path)
    a, b = rand_images(3, 1), rand_images(3, 2)
    assert torch.allclose(net.distance(a, a), torch.zeros(3), atol=1e-10)
    ab, ba = net.distance(a, b), net.distance(b, a)
    assert (ab > 0).all() and torch.allclose(ab, ba)
    # a small change is nearer than an unrelated image
    assert (net.distance(a, a + 2.0) < ab).all()
    with pytest.raises(CleftGanError, match="one shape"):
        net.distance(a, b[:2])


def test_tiny_lpips_distances_are_spatial_means(tiny_path: Path) -> None:
    # two flat colours: the distance barely depends on the image size (border pixels aside)
    net = load_lpips(tiny_path)
    grey, red = torch.full([1, 3, 1, 1], 128.0), torch.tensor([230.0, 40.0, 40.0]).view(1, 3, 1, 1)
    d = [float(net.distance(grey.expand(1, 3, s, s), red.expand(1, 3, s, s))) for s in (32, 128)]
    assert d[0] > 0 and d[1] == pytest.approx(d[0], rel=0.2)


def test_lpips_net_checks_its_input_and_output() -> None:
    net = identity_lpips()
    with pytest.raises(CleftGanError, match="float images"):
        net.features(torch.zeros([1, 3, 8, 8], dtype=torch.uint8))
    with pytest.raises(CleftGanError, match="float images"):
        net.features(torch.zeros([3, 8, 8]))

    class Wrong(torch.nn.Module):
        def forward(
            self, images: torch.Tensor, resize_images: bool = False, return_lpips: bool = False
        ) -> torch.Tensor:
            return images  # 4-D, not [N, D]

    wrong = LPIPSNet(Wrong(), digest="x", path="wrong.pt", device=torch.device("cpu"))
    with pytest.raises(CleftGanError, match=r"wrong\.pt returned \(1, 3, 8, 8\)"):
        wrong.features(torch.zeros([1, 3, 8, 8]))
    grey = torch.rand([2, 1, 8, 8])
    assert torch.equal(net.features(grey), net.features(grey.expand(-1, 3, -1, -1)))


def test_missing_or_wrong_lpips_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / LPIPS_FILENAME
    with pytest.raises(CleftGanError) as err:
        load_lpips(missing)
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg and LPIPS_URL in msg and "never downloaded" in msg
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(CleftGanError, match="not a TorchScript file") as err:
        load_lpips(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(CleftGanError, match="is a directory"):
        load_lpips(tmp_path)


# --- the real generator -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        PPLSettings(),
        PPLSettings(sampling="full"),
        PPLSettings(space="z"),
        PPLSettings(space="z", sampling="full", crop=True),
    ],
    ids=["w-end", "w-full", "z-end", "z-full-crop"],
)
def test_real_generator_gives_finite_positive_lengths(tiny_path: Path, settings: PPLSettings) -> None:
    lengths = path_lengths(small_generator(), load_lpips(tiny_path), 6, settings, batch=4)
    assert lengths.shape == (6,) and np.isfinite(lengths).all() and (lengths > 0).all()
    assert np.isfinite(ppl_from_lengths(lengths)) and ppl_from_lengths(lengths) > 0


def test_real_generator_lengths_do_not_depend_on_batch_size(tiny_path: Path) -> None:
    G, net = small_generator(), load_lpips(tiny_path)
    a = path_lengths(G, net, 7, PPLSettings(space="z", sampling="full"), batch=3)
    b = path_lengths(G, net, 7, PPLSettings(space="z", sampling="full"), batch=7)
    # per-sample draws agree; only float rounding of the 1e-4 step differs
    np.testing.assert_allclose(a, b, rtol=2e-2)
    c = path_lengths(G, net, 7, PPLSettings(space="z", sampling="full"), batch=7, seed=3)
    assert not np.allclose(a, c, rtol=0.1)


def test_real_conditional_generator_runs_with_labels(tiny_path: Path) -> None:
    G = small_generator(c_dim=3)
    labels = np.eye(3, dtype=np.float32)
    lengths = path_lengths(G, load_lpips(tiny_path), 4, PPLSettings(), labels=labels)
    assert np.isfinite(lengths).all() and (lengths > 0).all()
    with pytest.raises(CleftGanError, match="conditional"):
        path_lengths(G, load_lpips(tiny_path), 4, PPLSettings())

"""The ADA pipeline: exact identity at p = 0, per-op parameter statistics, geometry conventions,
gradients (first and second order), determinism, and no leaking at moderate p."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.training import augment as A
from cleftgan_hpc.training.augment import (
    ALL_OPS,
    COLOR_OPS,
    GEOMETRIC_OPS,
    AugmentConfig,
    AugmentPipe,
    lowpass_filter,
    sample_params,
    warp,
)

N_STATS = 4000  # samples per statistics check: standard errors of ~1-2 %


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def only(op: str, weight: float = 1.0) -> AugmentConfig:
    return AugmentConfig(ops=((op, weight),))


def params(op: str, p: float = 1.0, n: int = N_STATS, h: int = 64, w: int = 64, seed: int = 0) -> A.AugmentParams:
    return sample_params(only(op), p, n, h, w, gen(seed))


def pattern(h: int = 32, w: int = 32) -> torch.Tensor:
    """An asymmetric colour test image [3, H, W] in [-1, 1]: no flip, rotation or luma inversion maps it to itself."""
    yy, xx = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    r = xx * 1.6 - 0.8
    g = torch.exp(-((xx - 0.25) ** 2 + (yy - 0.3) ** 2) / 0.02) * 1.5 - 0.5
    b = (yy > 0.6).float() * 0.8 - 0.4 + 0.3 * xx
    return torch.stack([r, g, b])


def smooth_image(n: int = 2, c: int = 3, h: int = 24, w: int = 24, seed: int = 0) -> torch.Tensor:
    """Band-limited random images (well below Nyquist), so resampling errors stay small."""
    low = torch.randn(n, c, h // 4, w // 4, generator=gen(seed))
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)


def ks_uniform(samples: np.ndarray, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov statistic of ``samples`` against U(lo, hi) (no scipy needed)."""
    u = np.sort((samples - lo) / (hi - lo))
    n = len(u)
    return float(max((np.arange(1, n + 1) / n - u).max(), (u - np.arange(n) / n).max()))


KS_CRIT = 1.63 / math.sqrt(N_STATS)  # 1 % level


# -- p = 0 and trivial pipelines ----------------------------------------------------------------


@pytest.mark.parametrize("preset", ["bgc", "bg", "c"])
def test_p_zero_returns_the_input_exactly_and_draws_nothing(preset: str) -> None:
    pipe = AugmentPipe(AugmentConfig.preset(preset), p=0.0)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    g = gen(3)
    state = g.get_state()
    out = pipe(x, g)
    assert out is x
    assert torch.equal(g.get_state(), state)
    assert pipe(x) is x  # no generator needed when nothing is drawn


def test_none_pipeline_is_identity_at_any_p() -> None:
    pipe = AugmentPipe(AugmentConfig.preset("none"), p=0.7)
    x = torch.randn(2, 3, 8, 8)
    assert pipe(x, gen()) is x


def test_samples_whose_ops_did_not_fire_pass_through_bit_identical() -> None:
    pipe = AugmentPipe(AugmentConfig.preset("bgc"), p=0.1)
    x = torch.randn(64, 3, 16, 16)
    g = gen(5)
    probe = torch.Generator()
    probe.set_state(g.get_state())
    prm = pipe.sample_params(64, 16, 16, probe)
    out = pipe(x, g)
    untouched = ~(prm.geometric_active | prm.color_active)
    assert 0 < int(untouched.sum()) < 64
    assert torch.equal(out[untouched], x[untouched])
    assert not torch.allclose(out[~untouched], x[~untouched])


# -- per-op parameter statistics (matrices only, no images) ----------------------------------------


def test_xflip_flips_half_the_samples() -> None:
    prm = params("xflip")
    sx = prm.g_inv[:, 0, 0].numpy()
    assert set(np.unique(sx)) == {-1.0, 1.0}
    assert abs((sx < 0).mean() - 0.5) < 0.03
    eye_rest = prm.g_inv.clone()
    eye_rest[:, 0, 0] = 1
    assert torch.equal(eye_rest, torch.eye(3, dtype=torch.float64).expand_as(eye_rest))


def test_rotate90_quarter_turns_are_uniform() -> None:
    g = params("rotate90").g_inv
    k = torch.round(torch.atan2(g[:, 0, 1], g[:, 0, 0]) / (math.pi / 2)).long() % 4
    assert torch.equal(g[:, :2, :2].abs().round(), g[:, :2, :2].abs())  # exact quarter turns
    frac = torch.bincount(k, minlength=4).double() / N_STATS
    assert torch.allclose(frac, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03)


def test_xint_translates_by_whole_pixels_within_an_eighth() -> None:
    h, w = 48, 64
    g = params("xint", h=h, w=w).g_inv
    tx, ty = -g[:, 0, 2].numpy(), -g[:, 1, 2].numpy()
    assert np.array_equal(tx, np.round(tx)) and np.array_equal(ty, np.round(ty))
    assert np.abs(tx).max() == round(0.125 * w) and np.abs(ty).max() == round(0.125 * h)
    # t ~ U(-0.125, 0.125) of the size, then rounded: variance (0.25 w)^2 / 12 + 1/12
    assert abs(tx.std() - math.sqrt((0.25 * w) ** 2 / 12 + 1 / 12)) < 0.05 * tx.std()
    assert abs(tx.mean()) < 0.2 and abs(ty.mean()) < 0.2


def test_scale_is_isotropic_log2_normal_with_std_0_2() -> None:
    g = params("scale").g_inv
    assert torch.equal(g[:, 0, 0], g[:, 1, 1]) and torch.all(g[:, 0, 1] == 0)
    log2s = -torch.log2(g[:, 0, 0]).numpy()  # g_inv holds 1 / s
    assert abs(log2s.std() - 0.2) < 0.01 and abs(log2s.mean()) < 0.01


def test_rotation_angle_is_uniform_over_the_full_circle() -> None:
    # at p = 1 both rotations fire; check one by keeping the sampled matrix of a single rotation
    g = params("rotate").g_inv
    theta = torch.atan2(g[:, 1, 0], g[:, 0, 0]).numpy()  # g_inv = R(-theta): [[c, s], [-s, c]]
    assert ks_uniform(theta, -math.pi, math.pi) < KS_CRIT
    assert torch.allclose(torch.linalg.det(g[:, :2, :2]), torch.ones(N_STATS, dtype=torch.float64))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_the_two_rotations_together_fire_with_probability_p(p: float) -> None:
    g = params("rotate", p=p).g_inv
    rotated = (g[:, 0, 1] != 0).double().mean().item()
    assert abs(rotated - p) < 0.03


def test_aniso_stretches_with_log2_std_0_2_and_keeps_area() -> None:
    g = params("aniso").g_inv
    log2s = -torch.log2(g[:, 0, 0]).numpy()
    assert abs(log2s.std() - 0.2) < 0.01
    assert torch.allclose(g[:, 0, 0] * g[:, 1, 1], torch.ones(N_STATS, dtype=torch.float64))


def test_xfrac_translation_std_is_an_eighth_of_the_size() -> None:
    h, w = 32, 64
    g = params("xfrac", h=h, w=w).g_inv
    tx, ty = -g[:, 0, 2].numpy() / w, -g[:, 1, 2].numpy() / h
    assert abs(tx.std() - 0.125) < 0.006 and abs(ty.std() - 0.125) < 0.006


def test_brightness_offsets_have_std_0_2() -> None:
    c = params("brightness").color
    b = c[:, 0, 3].numpy()
    assert torch.equal(c[:, 0, 3], c[:, 1, 3]) and torch.equal(c[:, 0, 3], c[:, 2, 3])
    assert torch.equal(c[:, :3, :3], torch.eye(3, dtype=torch.float64).expand(N_STATS, 3, 3))
    assert abs(b.std() - 0.2) < 0.01 and abs(b.mean()) < 0.01


def test_contrast_is_log2_normal_with_std_0_5() -> None:
    c = params("contrast").color
    log2c = torch.log2(c[:, 0, 0]).numpy()
    assert abs(log2c.std() - 0.5) < 0.025 and abs(log2c.mean()) < 0.025


LUMA = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64) / math.sqrt(3)
CHROMA = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64) / math.sqrt(2)


def test_lumaflip_inverts_luma_in_half_the_samples_and_keeps_chroma() -> None:
    c = params("lumaflip").color
    luma = c @ LUMA
    flipped = torch.isclose(luma, -LUMA.expand_as(luma)).all(dim=1)
    kept = torch.isclose(luma, LUMA.expand_as(luma)).all(dim=1)
    assert bool((flipped | kept).all())
    assert abs(flipped.double().mean().item() - 0.5) < 0.03
    assert torch.allclose(c @ CHROMA, CHROMA.expand(N_STATS, 4))


def test_hue_rotates_about_the_luma_axis_uniformly_over_a_full_turn() -> None:
    c = params("hue").color
    r = c[:, :3, :3]
    assert torch.allclose(c @ LUMA, LUMA.expand(N_STATS, 4))
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(N_STATS, 3, 3))
    cos = (r.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2
    sin = (r[:, 1, 0] - r[:, 0, 1]) / (2 / math.sqrt(3))
    theta = torch.atan2(sin, cos).numpy()
    assert ks_uniform(theta, -math.pi, math.pi) < KS_CRIT


def test_saturation_scales_chroma_log2_normal_with_std_1_and_keeps_luma() -> None:
    c = params("saturation").color
    assert torch.allclose(c @ LUMA, LUMA.expand(N_STATS, 4))
    s = (c @ CHROMA) @ CHROMA
    assert torch.allclose(c @ CHROMA, s[:, None] * CHROMA)
    log2s = torch.log2(s).numpy()
    assert abs(log2s.std() - 1.0) < 0.05 and abs(log2s.mean()) < 0.05


@pytest.mark.parametrize("op", [o for o in ALL_OPS if o != "rotate"])
@pytest.mark.parametrize(("p", "weight"), [(0.3, 1.0), (0.6, 0.5)])
def test_each_op_fires_with_probability_p_times_its_weight(op: str, p: float, weight: float) -> None:
    prm = sample_params(only(op, weight), p, N_STATS, 64, 64, gen(1))
    active = prm.geometric_active if op in GEOMETRIC_OPS else prm.color_active
    # a discrete op that fires may still draw its identity outcome: flip 1/2, quarter turn 1/4,
    # lumaflip 1/2; xint rounds to 0 px with probability ~1/16 per axis at 64 px
    visible = {"xflip": 0.5, "rotate90": 0.75, "lumaflip": 0.5, "xint": 1 - (1 / 16) ** 2}.get(op, 1.0)
    assert abs(active.double().mean().item() - p * weight * visible) < 0.03


def test_draw_count_does_not_depend_on_p() -> None:
    """A resumed run draws the same stream whatever p was when it stopped."""
    states = []
    for p in (0.0, 0.3, 1.0):
        g = gen(7)
        sample_params(AugmentConfig(), p, 16, 32, 32, g)
        states.append(g.get_state())
    assert torch.equal(states[0], states[1]) and torch.equal(states[1], states[2])


# -- applying the transforms: conventions, edges, colour ---------------------------------------------


def _mat(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([rows], dtype=torch.float64)


FILTER = lowpass_filter(16, 4.0)


def test_filter_is_a_sound_half_band_lowpass() -> None:
    f = lowpass_filter(16, 4.0)
    assert np.allclose(f, f[::-1]) and abs(f.sum() - 1) < 1e-12
    assert abs(f[::2].sum() - 0.5) < 1e-12  # both polyphase halves: constants stay constant
    freqs = np.linspace(0, 0.5, 1001)
    resp = np.abs(np.exp(-2j * np.pi * np.outer(freqs, np.arange(16))) @ f)
    assert resp[freqs <= 0.15].min() > 0.99  # pass band (cycles per sample at the 2x rate)
    assert resp[freqs >= 0.35].max() < 0.01  # stop band: below -40 dB


def test_identity_warp_preserves_smooth_images_and_constants() -> None:
    x = smooth_image().double()
    out = warp(x, torch.eye(3, dtype=torch.float64).expand(2, 3, 3), FILTER)
    assert (out - x).abs().max() < 0.02 * x.abs().max()
    const = torch.full((1, 3, 12, 20), 0.7, dtype=torch.float64)
    c, s, z = math.cos(0.5) / 0.6, math.sin(0.5) / 0.6, 1 / 0.6  # rotate, zoom out to 60 %, shift
    far = _mat([[c, s, 3.3 * z], [-s, c, -2.0 * z], [0, 0, 1]])
    # reflection at the borders: no dark corners however far the transform reaches
    assert torch.allclose(warp(const, far, FILTER), const, atol=1e-12)


def test_geometric_conventions_match_flip_rot90_and_shift() -> None:
    x = smooth_image().double()
    tol = 0.02 * x.abs().max()
    assert (warp(x, _mat([[-1, 0, 0], [0, 1, 0], [0, 0, 1]]).expand(2, 3, 3), FILTER) - x.flip(3)).abs().max() < tol
    # a quarter turn of g_inv's kind (k = 1: [[0, 1], [-1, 0]]) equals torch.rot90 by -1
    q = _mat([[0, 1, 0], [-1, 0, 0], [0, 0, 1]]).expand(2, 3, 3)
    assert (warp(x, q, FILTER) - torch.rot90(x, -1, dims=(2, 3))).abs().max() < tol
    # output(x) = input(x - 3): a shift right by 3 px, edges reflected
    shifted = warp(x, _mat([[1, 0, -3], [0, 1, 0], [0, 0, 1]]).expand(2, 3, 3), FILTER)
    assert (shifted[..., 3:] - x[..., :-3]).abs().max() < tol


def test_matrix_and_convolution_resampling_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 3, 10, 14, dtype=torch.float64)
    g = sample_params(AugmentConfig.preset("bg"), 1.0, 2, 10, 14, gen(2)).g_inv
    fast = warp(x, g, FILTER)
    monkeypatch.setattr(A, "MATRIX_MAX_SIDE_CPU", 0)
    assert torch.allclose(fast, warp(x, g, FILTER), atol=1e-12)


def test_colour_matrix_is_applied_per_pixel() -> None:
    x = torch.randn(8, 3, 5, 7, dtype=torch.float64)
    c = sample_params(AugmentConfig.preset("c"), 1.0, 8, 5, 7, gen(4)).color
    want = torch.einsum("nij,njhw->nihw", c[:, :3, :3], x) + c[:, :3, 3, None, None]
    assert torch.allclose(A.apply_color(x, c), want)
    grey = x[:, :1]
    want_grey = grey * c[:, :3, :3].sum(2).mean(1)[:, None, None, None] + c[:, :3, 3].mean(1)[:, None, None, None]
    assert torch.allclose(A.apply_color(grey, c), want_grey)
    with pytest.raises(CleftGanError, match="1 or 3 channels"):
        A.apply_color(torch.randn(8, 4, 5, 7, dtype=torch.float64), c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("c", "h", "w"), [(3, 16, 16), (1, 12, 20)])
def test_shape_dtype_and_device_are_preserved(dtype: torch.dtype, c: int, h: int, w: int) -> None:
    x = torch.randn(6, c, h, w, dtype=dtype)
    out = AugmentPipe(AugmentConfig(), p=0.8)(x, gen())
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()


def test_same_seed_same_output_and_different_seed_differs() -> None:
    pipe = AugmentPipe(AugmentConfig(), p=0.6)
    x = torch.randn(8, 3, 16, 16)
    a, b, c = pipe(x, gen(11)), pipe(x, gen(11)), pipe(x, gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # a generator carries on: two calls differ, and replaying its state replays them
    g = gen(11)
    first, second = pipe(x, g), pipe(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)


# -- gradients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["bg", "c", "bgc"])
def test_gradients_flow_to_the_input_and_match_finite_differences(preset: str) -> None:
    pipe = AugmentPipe(AugmentConfig.preset(preset), p=1.0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    # fast mode checks random projections of the Jacobian: the full one costs minutes here
    assert torch.autograd.gradcheck(lambda t: pipe(t, gen(3)), (x,), eps=1e-6, atol=1e-6, fast_mode=True)
    # second order through a non-linearity, as the R1 penalty needs it
    assert torch.autograd.gradgradcheck(lambda t: pipe(t, gen(3)).square(), (x,), eps=1e-6, atol=1e-5,
                                        fast_mode=True)


@pytest.mark.parametrize("preset", ["bg", "c"])
def test_r1_style_double_backward_reaches_discriminator_weights(preset: str) -> None:
    pipe = AugmentPipe(AugmentConfig.preset(preset), p=0.5)
    d = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Softplus(), torch.nn.Flatten(),
                            torch.nn.LazyLinear(1))
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    logits = d(pipe(x, gen(8)))
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    assert grad.abs().sum() > 0
    grad.square().sum().backward()
    # every weight shapes grad_x (D's last bias cannot: it shifts logits, not their gradient)
    for layer in (d[0], d[3]):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# -- not leaking -----------------------------------------------------------------------------------


def _dihedral_and_inverted(x: torch.Tensor) -> torch.Tensor:
    """The 8 flips/quarter turns of x and their luma inversions: [16, C*H*W]; index 0 is x itself."""
    vs = [torch.rot90(x.flip(-1) if f else x, k, dims=(1, 2)) for f in (False, True) for k in range(4)]
    return torch.stack(vs + [-v for v in vs]).flatten(1)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def _augment_many(p: float, n: int = 512) -> torch.Tensor:
    x = pattern()
    pipe = AugmentPipe(AugmentConfig.preset("bgc"), p=p)
    g = gen(21)
    return torch.cat([pipe(x.expand(256, -1, -1, -1), g) for _ in range(n // 256)])


def test_augmentation_does_not_leak_at_moderate_p() -> None:
    """ADA's non-leaking condition (Karras et al. 2020, sec. 2.2): every op is invertible on
    distributions as long as the clean outcome stays the most likely one (p < ~0.8 for bgc).
    Then D sees the clean orientation and colours most, and G is not rewarded for producing
    flipped, rotated or colour-inverted images.

    The plain mean of augmented images is not the right statistic to compare with the
    original: contrast and saturation are log-normal (E[2^(0.5 n)] != 1) and integer/free
    translations average into a blur, so even a non-leaking pipeline moves the mean. Instead:
    (1) the mean augmented image must point at the original, not at any of its 15
    flipped/rotated/inverted versions, and (2) when each augmented image is classified by the
    version it resembles most, the original must dominate. At p = 1 both checks must fail,
    which shows they can detect leaking.
    """
    x = pattern()
    versions = _dihedral_and_inverted(x)
    out = _augment_many(0.2)
    sims = _cos(out.mean(0).flatten()[None], versions)
    assert sims[0] > 0.9 and sims[0] > sims[1:].max() + 0.3
    votes = torch.bincount(_cos(out.flatten(1)[:, None], versions[None]).argmax(1), minlength=16).double()
    votes /= votes.sum()
    assert votes[0] > 0.5 and votes[0] > 4 * votes[1:].max()
    # the leaking regime: the original no longer stands out
    out = _augment_many(1.0)
    sims = _cos(out.mean(0).flatten()[None], versions)
    votes = torch.bincount(_cos(out.flatten(1)[:, None], versions[None]).argmax(1), minlength=16).double()
    votes /= votes.sum()
    assert sims[0] < sims[1:].max() + 0.3 and votes[0] < 2 * votes[1:].max()


# -- configuration -----------------------------------------------------------------------------------


def test_the_spec_models_augment_values_are_accepted() -> None:
    from cleftgan_hpc.jobspec.stages import AugmentOp

    ops = [AugmentOp(op="xflip", weight=0.5), AugmentOp(op="brightness")]
    assert AugmentConfig.from_spec(ops).ops == (("xflip", 0.5), ("brightness", 1.0))


def test_presets_and_spec_forms() -> None:
    assert [op for op, _ in AugmentConfig().ops] == list(ALL_OPS)
    assert AugmentConfig.from_spec("bgc") == AugmentConfig()
    assert [op for op, _ in AugmentConfig.from_spec("bg").ops] == list(GEOMETRIC_OPS)
    assert [op for op, _ in AugmentConfig.from_spec("c").ops] == list(COLOR_OPS)
    assert AugmentConfig.from_spec("none").ops == ()
    custom = AugmentConfig.from_spec([["rotate", 0.5], "xflip", {"hue": 2}])
    assert custom.ops == (("xflip", 1.0), ("rotate", 0.5), ("hue", 2.0))  # canonical order
    assert AugmentConfig.from_spec({"xflip": 1, "scale": 0}).ops == (("xflip", 1.0),)
    assert AugmentConfig.from_spec([{"op": "scale", "weight": 0.25}, {"op": "hue"}]).ops == (
        ("scale", 0.25), ("hue", 1.0))
    assert custom.has_geometric and custom.has_color and not AugmentConfig.from_spec("c").has_geometric


@pytest.mark.parametrize(
    ("spec", "match"),
    [("bgcfnc", "unknown augment pipeline"), (["warp"], "unknown augment op"), ([["xflip", -1]], "weight"),
     (["xflip", "xflip"], "listed twice"), ([3], "expected a name")],
)
def test_bad_configs_are_clear_errors(spec: object, match: str) -> None:
    with pytest.raises(CleftGanError, match=match):
        AugmentConfig.from_spec(spec)  # type: ignore[arg-type]


def test_p_is_validated_and_travels_in_the_state_dict() -> None:
    pipe = AugmentPipe(p=0.25)
    with pytest.raises(CleftGanError):
        pipe.p = -0.1
    with pytest.raises(CleftGanError):
        pipe.p = float("nan")
    other = AugmentPipe()
    other.load_state_dict(pipe.state_dict())
    assert other.p == 0.25
    assert list(pipe.parameters()) == []
    with pytest.raises(CleftGanError, match="Generator"):
        pipe(torch.zeros(1, 3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_either_generator_and_keeps_half_precision() -> None:
    pipe = AugmentPipe(AugmentConfig(), p=0.7)
    x = torch.randn(8, 3, 32, 32)
    on_cpu = pipe(x, gen(4))
    on_gpu = pipe(x.cuda(), gen(4))  # a CPU generator may drive CUDA images: same draws
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_cpu, on_gpu.cpu(), atol=1e-4)
    g = torch.Generator(device="cuda").manual_seed(4)
    half = pipe(x.cuda().half(), g)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    big = torch.randn(2, 3, 256, 256, device="cuda", requires_grad=True)  # the convolution path
    pipe(big, gen(5)).square().sum().backward()
    assert big.grad is not None and torch.isfinite(big.grad).all()

"""The fast ops equal the plain ones (values and gradients); both support double backward."""

from __future__ import annotations

import itertools

import pytest
import torch

from cleftgan_hpc.model.filters import design_lowpass_filter, setup_resample_filter
from cleftgan_hpc.model.ops import bias_act, filtered_lrelu, upfirdn2d
from cleftgan_hpc.model.ops import reference as ref
from cleftgan_hpc.model.ops.modulated_conv import modulated_conv2d as fast_modconv


def _lowpass(taps: int, radial: bool = False) -> torch.Tensor:
    f = design_lowpass_filter(taps, cutoff=3.0, width=4.0, fs=16.0, radial=radial)
    assert f is not None
    return f


def _compare(fast_fn, plain_fn, inputs: list[torch.Tensor], atol: float = 1e-5) -> None:
    """Values and input gradients of fast_fn and plain_fn agree."""
    xs1 = [t.clone().requires_grad_(True) for t in inputs]
    xs2 = [t.clone().requires_grad_(True) for t in inputs]
    y1, y2 = fast_fn(*xs1), plain_fn(*xs2)
    assert y1.shape == y2.shape
    assert torch.allclose(y1, y2, atol=atol, rtol=1e-4), (y1 - y2).abs().max()
    w = torch.randn_like(y1)
    g1 = torch.autograd.grad((y1 * w).sum(), xs1)
    g2 = torch.autograd.grad((y2 * w).sum(), xs2)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, atol=atol * 10, rtol=1e-4), (a - b).abs().max()


UPFIRDN_CASES = [
    # taps, radial(2-D), up, down, padding, flip, gain
    (12, False, 2, 1, (9, 8, 9, 8), False, 4.0),
    (24, False, 4, 1, (-6, -9, -6, -9), False, 16.0),
    (12, False, 1, 2, (0, 0, 0, 0), False, 1.0),
    (12, False, 1, 2, (3, -2, 1, 4), True, 2.0),
    (12, False, 2, 2, (5, 5, 5, 5), False, 1.0),
    (12, True, 1, 2, (0, 0, 0, 0), False, 1.0),
    (12, True, 2, 1, (6, 5, 4, 7), False, 4.0),
    (1, False, 1, 1, (2, -1, 0, 1), False, 1.0),
]


@pytest.mark.parametrize("case", UPFIRDN_CASES, ids=[str(i) for i in range(len(UPFIRDN_CASES))])
def test_upfirdn2d_fast_equals_plain(case) -> None:
    taps, radial, up, down, padding, flip, gain = case
    f = _lowpass(taps, radial) if taps > 1 else torch.ones([1])
    x = torch.randn(2, 3, 17, 15)
    _compare(
        lambda t: upfirdn2d(t, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain),
        lambda t: ref.ref_upfirdn2d(t, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain),
        [x],
    )


def test_upfirdn2d_resample_filter_channels_last() -> None:
    f = setup_resample_filter([1, 3, 3, 1])
    x = torch.randn(2, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    _compare(
        lambda t: upfirdn2d(t, f, down=2, padding=(1, 1, 1, 1)),
        lambda t: ref.ref_upfirdn2d(t, f, down=2, padding=(1, 1, 1, 1)),
        [x],
    )


FLRELU_CASES = [
    # up taps, up, down taps, down, radial down, padding, in size, slope, gain, clamp
    (12, 2, 12, 2, False, (9, 8, 9, 8), 14, 0.2, 2**0.5, 256.0),
    (24, 4, 12, 2, False, (-6, -9, -6, -9), 14, 0.2, 2**0.5, 256.0),
    (12, 2, 12, 2, True, (9, 8, 9, 8), 14, 0.2, 2**0.5, 0.5),
    (12, 2, 12, 2, False, (-11, -12, -11, -12), 34, 0.2, 2**0.5, None),
    (1, 1, 1, 1, False, (0, 0, 0, 0), 8, 1.0, 1.0, 256.0),
]


@pytest.mark.parametrize("case", FLRELU_CASES, ids=[str(i) for i in range(len(FLRELU_CASES))])
def test_filtered_lrelu_fast_equals_plain(case) -> None:
    ut, up, dt, down, radial, padding, size, slope, gain, clamp = case
    fu = _lowpass(ut) if ut > 1 else None
    fd = _lowpass(dt, radial) if dt > 1 else None
    x = torch.randn(2, 3, size, size) * 2
    b = torch.randn(3)
    kw = dict(up=up, down=down, padding=padding, gain=gain, slope=slope, clamp=clamp)
    _compare(
        lambda t, bb: filtered_lrelu(t, fu, fd, bb, **kw),
        lambda t, bb: ref.ref_filtered_lrelu(t, fu, fd, bb, **kw),
        [x, b],
    )


@pytest.mark.parametrize(
    "k,demod,gain,pad", [(3, True, True, 2), (3, True, False, 1), (1, False, True, 0), (1, True, False, 0)]
)
def test_modulated_conv_fast_equals_plain(k: int, demod: bool, gain: bool, pad: int) -> None:
    x = torch.randn(3, 5, 9, 9)
    w = torch.randn(4, 5, k, k)
    s = torch.randn(3, 5) + 1
    g = torch.tensor(0.7) if gain else None
    _compare(
        lambda a, b, c: fast_modconv(a, b, c, demodulate=demod, padding=pad, input_gain=g),
        lambda a, b, c: ref.ref_modulated_conv2d(a, b, c, demodulate=demod, padding=pad, input_gain=g),
        [x, w, s],
    )


@pytest.mark.parametrize("act,clamp", [("linear", None), ("lrelu", None), ("lrelu", 0.5), ("linear", 0.3)])
def test_bias_act_fast_equals_plain(act: str, clamp: float | None) -> None:
    x, b = torch.randn(4, 6, 5, 5), torch.randn(6)
    _compare(
        lambda t, bb: bias_act(t, bb, act=act, clamp=clamp, gain=1.3),
        lambda t, bb: ref.ref_bias_act(t, bb, act=act, clamp=clamp, gain=1.3),
        [x, b],
    )


def _double(f: torch.Tensor | None) -> torch.Tensor | None:
    return None if f is None else f.double()


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
def test_double_backward_gradcheck(plain: bool) -> None:
    """gradcheck and gradgradcheck on tiny double tensors, for every op (R1 needs double backward)."""
    torch.manual_seed(1)
    fu, fd = _double(_lowpass(4)), _double(_lowpass(4, radial=True))
    f1 = _double(_lowpass(4))
    up_fn = ref.ref_upfirdn2d if plain else upfirdn2d
    fl_fn = ref.ref_filtered_lrelu if plain else filtered_lrelu
    mc_fn = ref.ref_modulated_conv2d if plain else fast_modconv
    ba_fn = ref.ref_bias_act if plain else bias_act
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(1, 2, dtype=torch.float64) + 0.5).requires_grad_(True)
    checks = [
        (lambda t: up_fn(t, f1, up=2, padding=(2, 1, 2, 1), gain=4), (x,)),
        (lambda t: up_fn(t, f1, down=2, padding=(1, 1, 1, 1)), (x,)),
        (lambda t: up_fn(t, fd, down=2, padding=(1, 2, 1, 2)), (x,)),
        (lambda t, bb: fl_fn(t, fu, fd, bb, up=2, down=2, padding=(2, 1, 2, 1), clamp=1.5), (x, b)),
        (lambda t, ww, ss: mc_fn(t, ww, ss, demodulate=True, padding=1), (x, w, s)),
        (lambda t, bb: ba_fn(t, bb, act="lrelu", clamp=1.0), (x, b)),
    ]
    for fn, inputs in checks:
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)
        assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-4)


def test_filters_match_known_properties() -> None:
    """1-D: symmetric, DC gain 1; radial: symmetric in both axes and transposition, DC gain 1."""
    for taps, radial in itertools.product([12, 24], [False, True]):
        f = _lowpass(taps, radial).double()
        assert f.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(f, f.flip(0), atol=1e-7)
        if radial:
            assert torch.allclose(f, f.t(), atol=1e-7)
    assert design_lowpass_filter(1, 1.0, 1.0, 4.0) is None


def test_bessel_j1_values() -> None:
    from cleftgan_hpc.model.filters import bessel_j1

    # Values of J1 from Abramowitz & Stegun, table 9.1.
    xs = [0.5, 1.0, 2.0, 5.0, 10.0]
    expected = [0.2422684577, 0.4400505857, 0.5767248078, -0.3275791376, 0.0434727462]
    assert bessel_j1(xs) == pytest.approx(expected, abs=1e-8)


# -- the memory-lean autograd path -------------------------------------------------------------------

from cleftgan_hpc.model.ops import lean_autograd  # noqa: E402
from cleftgan_hpc.model.ops.lean import pack_bits, unpack_bits  # noqa: E402
from cleftgan_hpc.model.ops.upfirdn2d import upfirdn2d_transpose  # noqa: E402


def test_pack_bits_round_trip() -> None:
    mask = torch.rand(3, 5, 7, 11) > 0.5  # 1155 values: not a multiple of 8
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


@pytest.mark.parametrize("case", [*UPFIRDN_CASES, (12, True, 2, 2, (3, 2, 5, 4), False, 1.0)],
                         ids=[str(i) for i in range(len(UPFIRDN_CASES) + 1)])
def test_upfirdn2d_transpose_is_the_adjoint(case) -> None:
    """<upfirdn2d(x), g> == <x, adjoint(g)> for every configuration the network uses."""
    taps, radial, up, down, padding, flip, gain = case
    f = _lowpass(taps, radial).double() if taps > 1 else torch.ones([1], dtype=torch.float64)
    x = torch.randn(2, 3, 17, 15, dtype=torch.float64)
    y = upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    g = torch.randn_like(y)
    back = upfirdn2d_transpose(g, (17, 15), f, up, down, padding, flip_filter=flip, gain=gain)
    assert back.shape == x.shape
    assert torch.allclose((y * g).sum(), (x * back).sum(), rtol=1e-10)


@pytest.mark.parametrize("case", FLRELU_CASES, ids=[str(i) for i in range(len(FLRELU_CASES))])
def test_lean_filtered_lrelu_equals_autograd(case) -> None:
    """Same values (to the bit) and the same gradients as autograd over the composite ops."""
    ut, up, dt, down, radial, padding, size, slope, gain, clamp = case
    fu = _lowpass(ut) if ut > 1 else None
    fd = _lowpass(dt, radial) if dt > 1 else None
    x = torch.randn(2, 3, size, size) * 2
    b = torch.randn(3)
    kw = dict(up=up, down=down, padding=padding, gain=gain, slope=slope, clamp=clamp)

    def run(lean: bool) -> tuple[torch.Tensor, ...]:
        xs, bs = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
        with lean_autograd(lean):
            y = filtered_lrelu(xs, fu, fd, bs, **kw)
        w = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        return (y, *torch.autograd.grad((y * w).sum(), [xs, bs]))

    lean, composite = run(True), run(False)
    assert torch.equal(lean[0], composite[0])
    for a, c in zip(lean[1:], composite[1:], strict=True):
        assert torch.allclose(a, c, atol=1e-5, rtol=1e-5), (a - c).abs().max()


def test_lean_path_keeps_codes_not_upsampled_values() -> None:
    """What autograd keeps for backward: a bit per upsampled value instead of 4 bytes (or more)."""
    fu, fd = _lowpass(24), _lowpass(12)

    def saved_bytes(lean: bool) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.randn(1, 8, 40, 40, requires_grad=True)
        with lean_autograd(lean), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            filtered_lrelu(x, fu, fd, None, up=4, down=2, padding=(-6, -9, -6, -9), clamp=256.0)
        return sum(seen.values())

    lean, composite = saved_bytes(True), saved_bytes(False)
    assert lean * 8 < composite, (lean, composite)


def test_lean_path_double_backward_gradcheck() -> None:
    """The lean functions' backward is itself differentiable (gradcheck and gradgradcheck)."""
    torch.manual_seed(2)
    fu, fd = _double(_lowpass(4)), _double(_lowpass(4, radial=True))
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(1, 2, dtype=torch.float64) + 0.5).requires_grad_(True)
    checks = [
        (lambda t, bb: filtered_lrelu(t, fu, fd, bb, up=2, down=2, padding=(2, 1, 2, 1), clamp=1.5), (x, b)),
        (lambda t, ww, ss: fast_modconv(t, ww, ss, demodulate=True, padding=1), (x, w, s)),
    ]
    with lean_autograd(True):
        for fn, inputs in checks:
            assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)
            assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-4)

"""The CPU speed paths keep the ops' results: cached filter kernels, the clamp skipped only where
it provably changes nothing, the lean path's codes in memory order (channels_last)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from cleftgan_hpc.model.filters import design_lowpass_filter
from cleftgan_hpc.model.ops import filtered_lrelu, lean_autograd, upfirdn2d
from cleftgan_hpc.model.ops.bias_act import clamp_is_idle
from cleftgan_hpc.model.ops.lean import _apply_codes, apply_codes_all, code_factors, pack_bits, pack_compare

flrelu_mod = importlib.import_module("cleftgan_hpc.model.ops.filtered_lrelu")
lean_mod = importlib.import_module("cleftgan_hpc.model.ops.lean")


def _lowpass(taps: int, radial: bool = False) -> torch.Tensor:
    f = design_lowpass_filter(taps, cutoff=3.0, width=4.0, fs=16.0, radial=radial)
    assert f is not None
    return f


@pytest.mark.parametrize("chunk,threads", [(1 << 18, 1), (64, 1), (64, 3)])
def test_pack_compare_equals_pack_bits(chunk: int, threads: int, monkeypatch) -> None:
    """Whole, in chunks ending mid-tensor, and split over threads (parts of whole chunks)."""
    monkeypatch.setattr(lean_mod, "CODE_CHUNK", chunk)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(1155)  # not a multiple of 8
        x[::7] = 0.0
        x[3::11] = -0.0
        for compare, value in ((torch.le, 0.0), (torch.gt, 0.5)):
            want = pack_bits(compare(x, value))
            assert torch.equal(pack_compare(x, compare, value), want)
            factors = code_factors(want, x.numel(), 0.2, 1.0, torch.float32)
            assert torch.equal(factors, torch.where(compare(x, value), 0.2, 1.0))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("nhwc", [False, True])
def test_codes_applied_in_chunks_equal_whole(nhwc: bool, monkeypatch) -> None:
    """Codes applied in place chunk by chunk (the CPU's backward) give the whole-tensor product, to
    the bit: chunks that end mid-tensor, a last chunk shorter than the rest, both codes of a clamp,
    channels_last gradients (codes in NHWC order); a gradient in another memory order is not chunked."""
    monkeypatch.setattr(lean_mod, "CODE_CHUNK", 24)
    g = torch.randn(2, 3, 7, 5)  # 210 values: not a multiple of 8 or of the chunk
    g = g.contiguous(memory_format=torch.channels_last) if nhwc else g
    u = torch.randn(g.shape)
    order = u.permute(0, 2, 3, 1).reshape(-1) if nhwc else u.reshape(-1)
    factors = [(pack_bits(order <= 0), 0.2, 1.0), (pack_bits(order.abs() > 1.0), 0.0, 1.0)]
    want = g.clone()
    for packed, if_set, if_clear in factors:
        want = _apply_codes(want, packed, if_set, if_clear, nhwc, inplace=False)
    assert torch.equal(want, g * torch.where(u <= 0, 0.2, 1.0) * torch.where(u.abs() > 1.0, 0.0, 1.0))
    calls = []
    monkeypatch.setattr(lean_mod, "code_factors", lambda p, n, *a: calls.append(n) or code_factors(p, n, *a))
    chunked = g.clone(memory_format=torch.preserve_format)
    assert apply_codes_all(chunked, factors, nhwc, inplace=True) is chunked and torch.equal(chunked, want)
    assert calls == [24, 24] * 8 + [18, 18]  # 8 whole chunks and a short one, each with both codes
    other = g.contiguous() if nhwc else g.contiguous(memory_format=torch.channels_last)
    assert torch.equal(apply_codes_all(other.clone(memory_format=torch.preserve_format), factors, nhwc, True), want)


def test_filter_cache_follows_in_place_changes() -> None:
    f = _lowpass(12)
    x = torch.randn(1, 3, 20, 20)
    y1 = upfirdn2d(x, f, up=2, padding=(5, 5, 5, 5), gain=4)
    with torch.no_grad():
        f.mul_(2)  # a new version of the same tensor: its kernels are made again
    y2 = upfirdn2d(x, f, up=2, padding=(5, 5, 5, 5), gain=4)
    assert torch.allclose(y2, 4 * y1, rtol=1e-6, atol=1e-6)
    g = f.clone().requires_grad_(True)  # a trainable filter is never cached: its gradient flows
    upfirdn2d(x, g, down=2).sum().backward()
    assert g.grad is not None and g.grad.abs().sum() > 0


@pytest.mark.parametrize("up,radial", [(1, False), (2, False), (4, False), (2, True)])
def test_clamp_is_idle_is_sound(up: int, radial: bool) -> None:
    """Where the check says the clamp is idle, no activation reaches the bound; with a bound
    well above the largest activation it says so."""
    torch.manual_seed(up)
    fu = _lowpass(6 * up, radial) if up > 1 else None
    for scale in (0.5, 5.0, 50.0):
        x = torch.randn(2, 4, 10, 10) * scale
        u = upfirdn2d(x, fu, up=up, padding=(3, 2, 3, 2), gain=up**2)
        peak = F.leaky_relu(u, 0.2).abs().max().item()
        assert not clamp_is_idle(x, fu, up, 0.2, peak * 0.999)
        for bound in (peak * 1.01, peak * 3, peak * 100):
            if clamp_is_idle(x, fu, up, 0.2, bound):
                assert peak <= bound
        assert clamp_is_idle(x, fu, up, 0.2, peak * 100)
    assert not clamp_is_idle(torch.full((1, 1, 3, 3), float("nan")), fu, up, 0.2, 1e9)


@pytest.mark.parametrize("clamp", [None, 256.0, 0.7])
@pytest.mark.parametrize("chunked", [False, True])
def test_lean_channels_last_equals_autograd(clamp: float | None, chunked: bool, monkeypatch) -> None:
    """channels_last inputs (codes kept in NHWC order), whole and in channel chunks: the same
    values as autograd over the composite ops, to the bit, and the same gradients."""
    if chunked:
        monkeypatch.setattr(flrelu_mod, "CHUNK_BYTES", 1)
        monkeypatch.setattr(flrelu_mod, "CHANNEL_GROUP", 2)
        monkeypatch.setattr(lean_mod, "CODE_CHUNK", 64)  # and the codes applied in chunks of 64 values
    fu, fd = _lowpass(12), _lowpass(12)
    x = (torch.randn(2, 5, 13, 13) * 2).contiguous(memory_format=torch.channels_last)
    b = torch.randn(5)
    kw = dict(up=2, down=2, padding=(9, 8, 9, 8), gain=2**0.5, slope=0.2, clamp=clamp)

    def run(lean: bool) -> tuple[torch.Tensor, ...]:
        xs, bs = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
        with lean_autograd(lean):
            y = filtered_lrelu(xs, fu, fd, bs, **kw)
        w = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        return (y, *torch.autograd.grad((y * w).sum(), [xs, bs]))

    lean, composite = run(True), run(False)
    if chunked:  # autograd's out-of-place clamp may hand a 2-channel chunk on in another layout: a rounding apart
        assert torch.allclose(lean[0], composite[0], atol=1e-6, rtol=0)
    else:
        assert torch.equal(lean[0], composite[0])
    for a, c in zip(lean[1:], composite[1:], strict=True):
        assert torch.allclose(a, c, atol=1e-5, rtol=1e-5), (a - c).abs().max()


@pytest.mark.parametrize("taps,up,down,padding", [
    (12, 2, 1, (9, 8, 9, 8)), (24, 4, 1, (-6, -9, -6, -9)), (12, 1, 2, (0, 0, 0, 0)), (12, 2, 2, (5, 5, 30, 30)),
    (12, 1, 2, (3, -2, 1, 4)),
])
def test_banded_rows_equal_depthwise(taps: int, up: int, down: int, padding: tuple[int, int, int, int]) -> None:
    """Filtering along H by banded matrix products (channels_last, no gradient) gives the
    depthwise convolutions' result, within rounding; with autograd recording, the convolutions run."""
    from cleftgan_hpc.model.ops.upfirdn2d import banded_fir

    f = _lowpass(taps)
    x = torch.randn(2, 5, 17, 15).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        banded = upfirdn2d(x, f, up=up, down=down, padding=padding, gain=up**2)
        with banded_fir(False):
            depthwise = upfirdn2d(x, f, up=up, down=down, padding=padding, gain=up**2)
    assert banded.shape == depthwise.shape
    assert torch.allclose(banded, depthwise, atol=1e-5, rtol=1e-5), (banded - depthwise).abs().max()
    xs = x.clone().requires_grad_(True)
    y = upfirdn2d(xs, f, up=up, down=down, padding=padding, gain=up**2)
    assert y.grad_fn is not None and torch.allclose(y, depthwise, atol=1e-5, rtol=1e-5)

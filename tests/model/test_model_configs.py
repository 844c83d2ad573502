"""Every configuration builds from its hyperparameters and runs; fast and plain ops agree on each."""

from __future__ import annotations

import pytest
import torch

from cleftgan_hpc.model import Discriminator, Generator, ops

CONFIGS = {
    # name: (resolution, c_dim, synthesis kwargs)
    "T16-cond": (16, 3, dict(channel_base=512, channel_max=16)),
    "T32": (32, 0, dict(channel_base=512, channel_max=16)),
    "R32-cond": (32, 2, dict(channel_base=1024, channel_max=32, conv_kernel=1, use_radial_filters=True)),
    "k1-32": (32, 0, dict(channel_base=512, channel_max=16, conv_kernel=1)),
    "T128": (128, 0, dict(channel_base=256, channel_max=8)),
}


def _build(name: str) -> tuple[Generator, Discriminator]:
    res, c_dim, kw = CONFIGS[name]
    torch.manual_seed(0)
    g = Generator(z_dim=16, c_dim=c_dim, w_dim=24, img_resolution=res, img_channels=3, **kw)
    d = Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3, channel_base=kw["channel_base"], channel_max=16)
    # Move the magnitude EMAs away from 1 so the input gain is exercised.
    with torch.no_grad():
        for name_, buf in g.named_buffers():
            if name_.endswith("magnitude_ema"):
                buf.fill_(0.5)
    return g.eval(), d.eval()


def _labels(n: int, c_dim: int) -> torch.Tensor | None:
    if c_dim == 0:
        return None
    return torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_builds_and_fast_equals_plain(name: str) -> None:
    g, d = _build(name)
    res, c_dim, _ = CONFIGS[name]
    z, c = torch.randn(4, 16), _labels(4, c_dim)
    with torch.no_grad():
        ws = g.mapping(z, c, truncation_psi=0.8)
        assert ws.shape == (4, g.num_ws, 24)
        img = g.synthesis(ws)
        with ops.plain_ops():
            img_plain = g.synthesis(ws)
            logits_plain = d(img_plain, c)
        logits = d(img, c)
    assert img.shape == (4, 3, res, res) and torch.isfinite(img).all()
    assert (img - img_plain).abs().max().item() <= 1e-4
    assert logits.shape == (4, 1) and (logits - logits_plain).abs().max().item() <= 1e-4
    assert img.std().item() > 1e-4  # not degenerate


def test_radial_config_has_2d_down_filters() -> None:
    g, _ = _build("R32-cond")
    layers = [getattr(g.synthesis, n) for n in g.synthesis.layer_names]
    assert any(layer.down_filter is not None and layer.down_filter.ndim == 2 for layer in layers)
    assert all(layer.down_filter.ndim == 1 for layer in layers if layer.is_critically_sampled and not layer.is_torgb)
    assert all(layer.conv_kernel == 1 for layer in layers)


def test_conditional_requires_labels() -> None:
    g, d = _build("T16-cond")
    with pytest.raises(ValueError, match="conditional"):
        g.mapping(torch.randn(2, 16), None)
    with pytest.raises(ValueError, match="conditional"):
        d(torch.randn(4, 3, 16, 16), None)


def test_truncation_cutoff_and_emas() -> None:
    g, _ = _build("T32")
    g.mapping.w_avg.normal_()
    z = torch.randn(3, 16)
    full = g.mapping(z, None)
    cut = g.mapping(z, None, truncation_psi=0.5, truncation_cutoff=4)
    assert torch.allclose(cut[:, 4:], full[:, 4:])
    assert torch.allclose(cut[:, :4], g.mapping.w_avg.lerp(full[:, :4], 0.5))
    before = g.mapping.w_avg.clone()
    layer = getattr(g.synthesis, g.synthesis.layer_names[0])
    mag = layer.magnitude_ema.clone()
    g.train()
    g(z, None, update_emas=True)
    assert not torch.equal(before, g.mapping.w_avg)
    assert not torch.equal(mag, layer.magnitude_ema)


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
def test_training_step_with_r1(plain: bool) -> None:
    """G and D forward/backward and the R1 penalty (double backward through D)."""
    g, d = _build("T16-cond")
    g.train(), d.train()
    z, c = torch.randn(4, 16), _labels(4, 3)
    with ops.plain_ops(plain):
        fake = g(z, c)
        loss_g = torch.nn.functional.softplus(-d(fake, c)).mean()
        loss_g.backward()
        real = torch.randn(4, 3, 16, 16).requires_grad_(True)
        logits = d(real, c)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        r1 = grad.square().sum(dim=[1, 2, 3]).mean()
        (torch.nn.functional.softplus(logits).mean() + r1).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.parameters())
    assert all(p.grad is not None for p in g.synthesis.parameters())


def test_freeze_layers_disables_grads() -> None:
    d = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16,
                      block_kwargs=dict(freeze_layers=4))  # fmt: skip
    assert not any(p.requires_grad for p in d.b32.parameters())
    assert all(p.requires_grad for p in d.b16.parameters())


def test_bad_resolution_is_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=48, img_channels=3)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
def test_low_precision_path_runs(plain: bool, dtype: str) -> None:
    """The mixed-precision plumbing (CUDA: num_fp16_res layers in float16/bfloat16), exercised on CPU."""
    torch.manual_seed(0)
    g = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=256, channel_max=16,
                  num_fp16_res=2, low_precision_dtype=dtype).eval()  # fmt: skip
    d = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16,
                      num_fp16_res=2, low_precision_dtype=dtype).eval()  # fmt: skip
    z = torch.randn(4, 16)
    with torch.no_grad(), ops.plain_ops(plain):
        ref_img, ref_logits = g(z), d(g(z))
        g.synthesis.low_precision_on_cpu = d.low_precision_on_cpu = True
        img = g(z)
        logits = d(img)
        assert torch.equal(g(z, force_fp32=True), ref_img)
    assert img.dtype == torch.float32 and logits.dtype == torch.float32
    assert any(getattr(g.synthesis, n).use_fp16 for n in g.synthesis.layer_names)
    assert (img - ref_img).abs().max().item() < 0.1
    assert (logits - ref_logits).abs().max().item() < 0.1
    assert not torch.equal(img, ref_img)  # the low-precision path did run


def test_chunked_execution_equals_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU chunking (batch, then channel groups) changes nothing: values, grads and EMA updates."""
    import importlib

    flrelu_mod = importlib.import_module("cleftgan_hpc.model.ops.filtered_lrelu")
    modconv_mod = importlib.import_module("cleftgan_hpc.model.ops.modulated_conv")

    g, d = _build("T32")
    z = torch.randn(4, 16)
    g.train()

    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        g.zero_grad(set_to_none=True)
        d.zero_grad(set_to_none=True)
        img = g(z, None, update_emas=True)
        logits = d(img, None)
        logits.sum().backward()
        emas = torch.stack([getattr(g.synthesis, n).magnitude_ema.clone() for n in g.synthesis.layer_names])
        return (
            img.detach(),
            logits.detach(),
            emas,
            [p.grad.clone() for p in g.parameters()],
            [p.grad.clone() for p in d.parameters()],
        )

    state = {k: v.clone() for k, v in g.state_dict().items()}
    with torch.no_grad():
        whole_inference = g(z, None, truncation_psi=0.7)
    whole = run()
    g.load_state_dict(state)
    monkeypatch.setattr(modconv_mod, "LAYER_CHUNK_BYTES", 1)  # one sample per chunk
    monkeypatch.setattr(flrelu_mod, "CHUNK_BYTES", 1)  # and channel groups inside each layer
    monkeypatch.setattr(flrelu_mod, "CHANNEL_GROUP", 8)
    with torch.no_grad():
        assert torch.allclose(whole_inference, g(z, None, truncation_psi=0.7), atol=1e-5, rtol=1e-5)
    chunked = run()
    for a, b in zip(whole[:3], chunked[:3], strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    for ga, gb in zip(whole[3] + whole[4], chunked[3] + chunked[4], strict=True):
        assert torch.allclose(ga, gb, atol=1e-4, rtol=1e-3), (ga - gb).abs().max()


def test_r1_penalty_and_its_gradients_fast_equal_plain() -> None:
    """Double backward through D: the R1 penalty and its parameter gradients agree across op versions."""
    _, d = _build("R32-cond")
    d.train()
    real = torch.randn(4, 3, 32, 32)
    c = _labels(4, 2)
    results = []
    for plain in (False, True):
        d.zero_grad(set_to_none=True)
        x = real.clone().requires_grad_(True)
        with ops.plain_ops(plain):
            (grad,) = torch.autograd.grad(d(x, c).sum(), x, create_graph=True)
            r1 = grad.square().sum()
            r1.backward()
        results.append(
            (r1.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in d.parameters()])
        )
    (r1_fast, g_fast), (r1_plain, g_plain) = results
    assert torch.allclose(r1_fast, r1_plain, rtol=1e-4)
    for a, b in zip(g_fast, g_plain, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), (a - b).abs().max()

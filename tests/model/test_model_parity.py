"""Parity with the reference implementation's outputs (fixture sg3t_64), CPU float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cleftgan_hpc.model import ops
from cleftgan_hpc.model.generate import make_transform


def _close_img(ours: torch.Tensor, ref: np.ndarray) -> None:
    err = (ours - torch.from_numpy(ref)).abs()
    assert ours.shape == ref.shape
    assert err.max().item() <= 2e-3, f"max abs error {err.max().item():.3g}"
    assert err.mean().item() <= 1e-4, f"mean abs error {err.mean().item():.3g}"


def test_loaded_metadata(fixture_network, fixture_dir) -> None:
    import json

    meta = json.loads((fixture_dir / "meta.json").read_text())
    g = fixture_network.G_ema
    assert g.synthesis.layer_names == meta["layer_names"]
    assert g.num_ws == meta["num_ws"]
    assert sum(p.numel() for p in g.parameters()) == meta["G_params"]
    assert sum(p.numel() for p in fixture_network.D.parameters()) == meta["D_params"]
    assert (g.z_dim, g.c_dim, g.w_dim, g.img_resolution, g.img_channels) == (64, 0, 64, 64, 3)
    assert fixture_network.augment_p == pytest.approx(0.237)
    assert fixture_network.training_set_kwargs["resolution"] == 64
    assert not g.training and not fixture_network.D.training and not fixture_network.G.training


@pytest.mark.parametrize("psi,key", [(1.0, "ws_psi1"), (0.7, "ws_psi07")])
def test_mapping(fixture_network, reference, psi: float, key: str) -> None:
    z = torch.from_numpy(reference["z"])
    with torch.no_grad():
        ws = fixture_network.G_ema.mapping(z, None, truncation_psi=psi, truncation_cutoff=None)
    assert ws.shape == reference[key].shape
    assert (ws - torch.from_numpy(reference[key])).abs().max().item() <= 1e-4


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
@pytest.mark.parametrize("ws_key,img_key", [("ws_psi1", "img_psi1"), ("ws_psi07", "img_psi07")])
def test_synthesis(fixture_network, reference, ws_key: str, img_key: str, plain: bool) -> None:
    with torch.no_grad(), ops.plain_ops(plain):
        img = fixture_network.G_ema.synthesis(torch.from_numpy(reference[ws_key]))
    _close_img(img, reference[img_key])


def test_full_generator_call(fixture_network, reference) -> None:
    with torch.no_grad():
        img = fixture_network.G_ema(torch.from_numpy(reference["z"]), None, truncation_psi=0.7)
    _close_img(img, reference["img_psi07"])


def test_synthesis_with_transform(fixture_network, reference) -> None:
    g = fixture_network.G_ema
    # The fixture's transform is the inverse of translate (0.1, -0.05), rotate 10 degrees.
    expected = np.linalg.inv(make_transform((0.1, -0.05), 10.0))
    assert np.allclose(expected, reference["transform"], atol=1e-6)
    saved = g.synthesis.input.transform.clone()
    try:
        g.synthesis.input.transform.copy_(torch.from_numpy(reference["transform"]))
        with torch.no_grad():
            img = g.synthesis(torch.from_numpy(reference["ws_psi1"]))
    finally:
        g.synthesis.input.transform.copy_(saved)
    _close_img(img, reference["img_psi1_transformed"])


def _window(x: torch.Tensor, reference: dict[str, np.ndarray]) -> torch.Tensor:
    """The window of x that reference_small.npz keeps of each layer output (a negative offset
    counts from the far edge; see tests/fixtures/make_small_reference.py)."""
    y0, x0, size = (int(reference[k]) for k in ("crop_y0", "crop_x0", "crop_size"))
    h, w = x.shape[-2:]
    y0, x0 = (y0 if y0 >= 0 else h + y0), (x0 if x0 >= 0 else w + x0)
    return x[..., y0:y0 + size, x0:x0 + size]


def test_per_layer_outputs(fixture_network, reference) -> None:
    """Our synthesis of seed 0, layer by layer (each layer on our previous layer's full output),
    against the reference in the shipped window of every output, with the tolerance taken
    from the full reference output's max |value|."""
    s = fixture_network.G_ema.synthesis
    ws = torch.from_numpy(reference["ws_psi1"][:1])
    with torch.no_grad():
        x = s.input(ws[:, 0])
        assert tuple(x.shape) == tuple(reference["full_shape_layer_input"])
        assert (_window(x, reference) - torch.from_numpy(reference["layer_input"])).abs().max().item() <= 1e-5
        for i, name in enumerate(s.layer_names):
            x = getattr(s, name)(x, ws[:, i + 1])
            ref = reference[f"layer_{name}"]
            assert tuple(x.shape) == tuple(reference[f"full_shape_layer_{name}"]), name
            tol = 1e-3 * max(1.0, float(reference[f"absmax_layer_{name}"]))
            assert (_window(x, reference) - torch.from_numpy(ref)).abs().max().item() <= tol, name


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
def test_discriminator(fixture_network, reference, plain: bool) -> None:
    with torch.no_grad(), ops.plain_ops(plain):
        logits = fixture_network.D(torch.from_numpy(reference["img_psi1"]), None)
    assert logits.shape == (4, 1)
    assert (logits - torch.from_numpy(reference["d_logits_psi1"])).abs().max().item() <= 1e-3


def test_fresh_build_reproduces_fixture_filters(fixture_network) -> None:
    """Building from the recorded hyperparameters designs the same filters the pickle stores."""
    from cleftgan_hpc.model import Generator

    torch.manual_seed(0)
    fresh = Generator(**fixture_network.G_ema.init_kwargs)
    loaded = dict(fixture_network.G_ema.named_buffers())
    for name, buf in fresh.named_buffers():
        if name.endswith(("up_filter", "down_filter")):
            assert torch.allclose(buf, loaded[name], atol=1e-7, rtol=0), name
        assert buf.shape == loaded[name].shape
    for layer_name in fresh.synthesis.layer_names:
        a, b = getattr(fresh.synthesis, layer_name), getattr(fixture_network.G_ema.synthesis, layer_name)
        assert a.padding == b.padding and a.up_factor == b.up_factor and a.down_factor == b.down_factor

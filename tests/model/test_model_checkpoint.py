"""Our network file: convert round trip gives identical outputs; broken files fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cleftgan_hpc.errors import NetworkFormatError
from cleftgan_hpc.model import load_network, save_checkpoint


@pytest.fixture(scope="module")
def converted(fixture_network, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "net.safetensors"
    save_checkpoint(fixture_network, path)
    return path


def test_round_trip_identical_outputs(fixture_network, reference, converted: Path) -> None:
    net = load_network(converted)
    z = torch.from_numpy(reference["z"])
    img = torch.from_numpy(reference["img_psi1"])
    with torch.no_grad():
        for key in ("G", "G_ema"):
            a = getattr(fixture_network, key)(z, None, truncation_psi=0.7)
            b = getattr(net, key)(z, None, truncation_psi=0.7)
            assert torch.equal(a, b), key
        assert torch.equal(fixture_network.D(img, None), net.D(img, None))
    assert net.augment_p == fixture_network.augment_p
    assert net.training_set_kwargs == fixture_network.training_set_kwargs
    for key in ("G", "D", "G_ema"):
        sd_a, sd_b = getattr(fixture_network, key).state_dict(), getattr(net, key).state_dict()
        assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not net.G_ema.training


def test_file_is_plain_safetensors(converted: Path) -> None:
    with safe_open(str(converted), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["format"] == "cleftgan-hpc-network"
    assert any(k.startswith("G_ema.synthesis.L0_") for k in keys)
    assert b"\x80\x04" not in converted.read_bytes()[:64]


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    edit(tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_missing_tensor_fails_clearly(converted: Path, tmp_path: Path) -> None:
    p = _rewrite(converted, tmp_path / "m.safetensors", lambda t: t.pop("G_ema.mapping.w_avg"))
    with pytest.raises(NetworkFormatError, match=r"missing 1 tensor\(s\): mapping.w_avg"):
        load_network(p)


def test_misshaped_tensor_fails_clearly(converted: Path, tmp_path: Path) -> None:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t["D.b4.out.weight"] = torch.zeros(2, 64)

    p = _rewrite(converted, tmp_path / "s.safetensors", edit)
    with pytest.raises(NetworkFormatError, match=r"b4.out.weight has shape \[2, 64\], expected \[1, 64\]"):
        load_network(p)


def test_foreign_safetensors_refused(tmp_path: Path) -> None:
    p = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(p))
    with pytest.raises(NetworkFormatError, match="not a cleftgan-hpc network file"):
        load_network(p)


def test_fresh_network_round_trip(tmp_path: Path) -> None:
    from cleftgan_hpc.model import Discriminator, Generator, Network

    torch.manual_seed(0)
    g = Generator(z_dim=8, c_dim=2, w_dim=8, img_resolution=16, img_channels=3, channel_base=256, channel_max=8,
                  conv_kernel=1, use_radial_filters=True)  # fmt: skip
    d = Discriminator(c_dim=2, img_resolution=16, img_channels=3, channel_base=256, channel_max=8)
    save_checkpoint(Network(G=g, D=d, G_ema=None, augment_p=0.1), tmp_path / "n.safetensors")
    net = load_network(tmp_path / "n.safetensors")
    assert net.G_ema is None and net.augment_p == 0.1
    z, c = torch.randn(2, 8), torch.eye(2)
    with torch.no_grad():
        assert torch.equal(g.eval()(z, c), net.G(z, c))
        img = torch.from_numpy(np.random.RandomState(0).randn(2, 3, 16, 16).astype(np.float32))
        assert torch.equal(d.eval()(img, c), net.D(img, c))

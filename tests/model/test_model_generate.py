"""`generate` and `convert` through argparse, as the main CLI wires them."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleftgan_hpc.model.commands import add_commands
from cleftgan_hpc.model.generate import GenerateError, parse_seeds


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cleftgan-hpc")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_parse_seeds() -> None:
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    for bad in ("3-1", "a", "1-", ""):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_generate_grid_matches_reference(fixture_dir: Path, reference, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    assert _run(["generate", "--network", str(fixture_dir / "network.pkl"), "--seeds", "0-3", "--trunc", "0.7",
                 "--out", str(out)]) == 0  # fmt: skip
    grid = np.asarray(Image.open(out))
    assert grid.shape == (128, 128, 3)
    expected = (np.clip(reference["img_psi07"] * 127.5 + 128, 0, 255)).astype(np.uint8).transpose(0, 2, 3, 1)
    tiles = [grid[:64, :64], grid[:64, 64:], grid[64:, :64], grid[64:, 64:]]
    for tile, exp in zip(tiles, expected, strict=True):
        assert np.abs(tile.astype(int) - exp.astype(int)).max() <= 1


def test_convert_then_generate_dir_with_transform(fixture_dir: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "net.safetensors"
    assert _run(["convert", str(fixture_dir / "network.pkl"), str(ckpt)]) == 0
    assert "wrote" in capsys.readouterr().out
    out = tmp_path / "imgs"
    assert _run(["generate", "--network", str(ckpt), "--seeds", "5,9", "--translate", "0.1,-0.05", "--rotate",
                 "10", "--out", str(out)]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["seed0005.png", "seed0009.png"]


def test_generate_class_on_unconditional_is_a_user_error(fixture_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(GenerateError, match="unconditional"):
        _run(["generate", "--network", str(fixture_dir / "network.pkl"), "--seeds", "0", "--class", "1",
              "--out", str(tmp_path / "x.png")])  # fmt: skip


def test_bad_arguments_rejected_by_argparse(capsys) -> None:
    with pytest.raises(SystemExit):
        _run(["generate", "--network", "n.pkl", "--seeds", "5-1", "--out", "x.png"])
    with pytest.raises(SystemExit):
        _run(["generate", "--network", "n.pkl", "--seeds", "1", "--translate", "1", "--out", "x.png"])


def test_generate_conditional_network(tmp_path: Path) -> None:
    import torch

    from cleftgan_hpc.model import Generator, Network, save_checkpoint

    torch.manual_seed(0)
    g = Generator(z_dim=8, c_dim=3, w_dim=8, img_resolution=16, img_channels=3, channel_base=256, channel_max=8)
    save_checkpoint(Network(G_ema=g), tmp_path / "cond.safetensors")
    net = str(tmp_path / "cond.safetensors")
    with pytest.raises(GenerateError, match="pass --class"):
        _run(["generate", "--network", net, "--seeds", "0", "--out", str(tmp_path / "a.png")])
    with pytest.raises(GenerateError, match="out of range"):
        _run(["generate", "--network", net, "--seeds", "0", "--class", "3", "--out", str(tmp_path / "a.png")])
    assert _run(["generate", "--network", net, "--seeds", "0-2", "--class", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "g.png")).shape == (32, 32, 3)  # 2x2 grid of 16x16, one tile empty

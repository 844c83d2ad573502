"""The StyleGAN2 generator: parity with the reference's outputs (fixture sg2_64, CPU float32),
loading official pickles (StyleGAN3 repository and StyleGAN2-ADA flavours), our file format, and
`generate` on a StyleGAN2 network.

Tolerances from the fixture's README (shared/fixtures/stylegan2/README.md): ws 1e-4, images
2e-3 max and 1e-4 mean absolute error, D logits 1e-3.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hostile_pickles import dumps, module_record
from PIL import Image

from cleftgan_hpc.errors import NetworkFormatError
from cleftgan_hpc.model import Network, StyleGAN2Generator, load_checkpoint, load_network, ops, save_checkpoint
from cleftgan_hpc.model.commands import add_commands
from cleftgan_hpc.model.generate import GenerateError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "stylegan2" / "sg2_64"


@pytest.fixture(scope="module")
def sg2() -> Network:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_network(FIXTURE / "network.pkl")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def _close_img(ours: torch.Tensor, expected: np.ndarray) -> None:
    assert tuple(ours.shape) == expected.shape
    err = (ours - torch.from_numpy(expected)).abs()
    assert err.max().item() <= 2e-3, f"max abs error {err.max().item():.3g}"
    assert err.mean().item() <= 1e-4, f"mean abs error {err.mean().item():.3g}"


def test_loaded_metadata(sg2: Network) -> None:
    meta = json.loads((FIXTURE / "meta.json").read_text())
    g = sg2.G_ema
    assert isinstance(g, StyleGAN2Generator) and isinstance(sg2.G, StyleGAN2Generator)
    assert g.synthesis.block_resolutions == meta["layer_names"]
    assert g.num_ws == meta["num_ws"]
    assert sum(p.numel() for p in g.parameters()) == meta["G_params"]
    assert sum(p.numel() for p in sg2.D.parameters()) == meta["D_params"]
    assert (g.z_dim, g.c_dim, g.w_dim, g.img_resolution, g.img_channels) == (64, 0, 64, 64, 3)
    assert g.init_kwargs["mapping_kwargs"] == {"num_layers": 2} and g.init_kwargs["conv_clamp"] == 256
    assert sg2.augment_p == pytest.approx(0.237)
    assert sg2.training_set_kwargs["resolution"] == 64
    assert not g.training and not sg2.G.training and not sg2.D.training
    assert not any(p.requires_grad for p in g.parameters())  # the EMA copy is never trained directly


@pytest.mark.parametrize("psi,key", [(1.0, "ws_psi1"), (0.7, "ws_psi07")])
def test_mapping(sg2: Network, ref: dict[str, np.ndarray], psi: float, key: str) -> None:
    with torch.no_grad():
        ws = sg2.G_ema.mapping(torch.from_numpy(ref["z"]), None, truncation_psi=psi)
    assert ws.shape == ref[key].shape
    assert (ws - torch.from_numpy(ref[key])).abs().max().item() <= 1e-4


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
@pytest.mark.parametrize("ws_key,img_key", [("ws_psi1", "img_psi1"), ("ws_psi07", "img_psi07")])
def test_synthesis_const_noise(
    sg2: Network, ref: dict[str, np.ndarray], ws_key: str, img_key: str, plain: bool
) -> None:
    with torch.no_grad(), ops.plain_ops(plain):
        img = sg2.G_ema.synthesis(torch.from_numpy(ref[ws_key]), noise_mode="const")
    _close_img(img, ref[img_key])


def test_full_generator_call(sg2: Network, ref: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        img = sg2.G_ema(torch.from_numpy(ref["z"]), None, truncation_psi=0.7)  # noise_mode "const" by default
    _close_img(img, ref["img_psi07"])


def test_discriminator_logits(sg2: Network, ref: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        logits = sg2.D(torch.from_numpy(ref["img_psi1"]), None)
    assert logits.shape == ref["d_logits_psi1"].shape
    assert (logits - torch.from_numpy(ref["d_logits_psi1"])).abs().max().item() <= 1e-3


def test_truncation_cutoff(sg2: Network, ref: dict[str, np.ndarray]) -> None:
    z, g = torch.from_numpy(ref["z"]), sg2.G_ema
    with torch.no_grad():
        ws = g.mapping(z, None, truncation_psi=0.7, truncation_cutoff=3)
    assert torch.allclose(ws[:, :3], torch.from_numpy(ref["ws_psi07"][:, :3]), atol=1e-4)
    assert torch.allclose(ws[:, 3:], torch.from_numpy(ref["ws_psi1"][:, 3:]), atol=1e-4)
    with torch.no_grad():
        at_zero = g.mapping(z, None, truncation_psi=0.0)
    assert torch.allclose(at_zero, g.mapping.w_avg.expand_as(at_zero))


def test_noise_modes(sg2: Network, ref: dict[str, np.ndarray]) -> None:
    g, ws = sg2.G_ema, torch.from_numpy(ref["ws_psi1"])
    with torch.no_grad():
        const = g.synthesis(ws, noise_mode="const")
        none = g.synthesis(ws, noise_mode="none")
        torch.manual_seed(7)
        random_a = g.synthesis(ws, noise_mode="random")
        random_b = g.synthesis(ws, noise_mode="random")
        torch.manual_seed(7)
        random_a2 = g.synthesis(ws, noise_mode="random")
    with torch.no_grad():  # (without gradients the CPU draws in parts: compare like with like)
        assert torch.equal(const, g.synthesis(ws))  # const is the default: sampling is pure in the seed
    for other in (none, random_a):
        assert 1e-3 < (other - const).abs().mean().item() < 0.5  # the noise strengths are trained (non-zero)
    assert not torch.equal(random_a, random_b) and torch.equal(random_a, random_a2)
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(ws, noise_mode="fresh")


def test_safetensors_round_trip(sg2: Network, ref: dict[str, np.ndarray], tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "sg2.safetensors"
    save_checkpoint(sg2, path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    assert meta["version"] == "2" and config["architectures"] == {"G": "stylegan2", "G_ema": "stylegan2"}
    back = load_checkpoint(path)
    assert isinstance(back.G_ema, StyleGAN2Generator) and isinstance(back.G, StyleGAN2Generator)
    assert back.augment_p == pytest.approx(sg2.augment_p) and back.G_ema.init_kwargs == sg2.G_ema.init_kwargs
    z = torch.from_numpy(ref["z"])
    with torch.no_grad():
        assert torch.equal(back.G_ema(z, None, truncation_psi=0.7), sg2.G_ema(z, None, truncation_psi=0.7))
        assert torch.equal(back.D(torch.from_numpy(ref["img_psi1"])), sg2.D(torch.from_numpy(ref["img_psi1"])))
    # load_network recognises the format too, and a StyleGAN3-only file stays version 1
    assert isinstance(load_network(path).G_ema, StyleGAN2Generator)


@pytest.mark.parametrize(
    "architectures,message",
    [({"G_ema": "stylegan9"}, "unknown generator architecture 'stylegan9'"), ({}, "the file carries only")],
    ids=["unknown", "absent"],
)
def test_architecture_entry_of_our_file(sg2: Network, tmp_path: Path, architectures: dict, message: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = tmp_path / "sg2.safetensors"
    save_checkpoint(Network(G_ema=sg2.G_ema), path)
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    config = {**json.loads(meta["config"]), "architectures": architectures}
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), {**meta, "config": json.dumps(config)})
    with pytest.raises(NetworkFormatError, match=message):  # absent means StyleGAN3, whose tensors differ
        load_checkpoint(tmp_path / "bad.safetensors")


# --- official pickles in both flavours, made from our modules in the reference's format ----------

_REFERENCE_CLASS = {"StyleGAN2Generator": "Generator", "StyleGAN2Synthesis": "SynthesisNetwork",
                    "UpsampleSkip": "Conv2dLayer"}  # fmt: skip


def _as_reference_record(rec: Any, ada: bool) -> Any:
    """Rename our classes to the reference's and give blocks the attribute its StyleGAN3 repository sets."""
    meta = rec.args[0]
    meta["class_name"] = _REFERENCE_CLASS.get(meta["class_name"], meta["class_name"])
    if meta["class_name"] == "SynthesisBlock" and not ada:
        meta["state"]["fused_modconv_default"] = True
    for sub in meta["state"]["_modules"].values():
        _as_reference_record(sub, ada)
    return rec


def _official_sg2_pickle(g: StyleGAN2Generator, kwargs: dict[str, Any], ada: bool, path: Path) -> Path:
    rec = _as_reference_record(module_record(g, kwargs), ada)
    path.write_bytes(dumps({"G_ema": rec, "augment_pipe": None}))
    return path


def _tiny(**kw: Any) -> StyleGAN2Generator:
    torch.manual_seed(0)
    args = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=128, channel_max=8,
                mapping_kwargs={"num_layers": 2})  # fmt: skip
    args.update(kw)
    g = StyleGAN2Generator(**args).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    return g


def test_stylegan2_ada_pickle_loads_with_its_defaults(tmp_path: Path) -> None:
    g = _tiny(conv_clamp=None, mapping_kwargs={"num_layers": 2, "w_avg_beta": 0.995}, num_fp16_res=0)
    z = torch.randn(3, 8)
    synthesis = {"channel_base": 128, "channel_max": 8}  # no num_fp16_res / conv_clamp: ADA's defaults apply
    ada_kwargs = {"z_dim": 8, "w_dim": 8, "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": synthesis,
                  "c_dim": 0, "img_resolution": 16, "img_channels": 3}  # fmt: skip
    loaded = load_network(_official_sg2_pickle(g, ada_kwargs, ada=True, path=tmp_path / "ada.pkl")).G_ema
    assert loaded.init_kwargs["conv_clamp"] is None and loaded.init_kwargs["num_fp16_res"] == 0
    assert loaded.init_kwargs["mapping_kwargs"]["w_avg_beta"] == 0.995
    with torch.no_grad():
        assert torch.equal(loaded(z, None, truncation_psi=0.5), g(z, None, truncation_psi=0.5))


def test_stylegan3_repository_pickle_with_training_options_loads(tmp_path: Path) -> None:
    g = _tiny(architecture="resnet", fused_modconv_default="inference_only")
    kwargs = {k: v for k, v in g.init_kwargs.items() if k not in ("low_precision_dtype", "channels_last")}
    loaded = load_network(_official_sg2_pickle(g, kwargs, ada=False, path=tmp_path / "sg2.pkl")).G_ema
    assert loaded.init_kwargs["fused_modconv_default"] == "inference_only"
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(loaded(z), g(z))


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"kernel_size": 4}, "kernel_size is 4, expected an odd integer"),
        ({"architecture": "dense"}, "architecture is 'dense', expected one of"),
        ({"fused_modconv_default": "sometimes"}, "fused_modconv_default is 'sometimes', expected one of"),
        ({"fused_modconv_default": 1}, "fused_modconv_default is 1, expected one of"),
        ({"channel_max": 4096, "channel_base": 1 << 20}, "parameters"),
        ({"img_resolution": 4096}, "buffer elements but the file carries only"),
        ({"magnitude_ema_beta": 0.9}, "unsupported constructor argument"),
        ({"mapping_kwargs": {"num_layers": 2, "w_avg_beta": None}}, "w_avg_beta is None"),
    ],
    ids=["even-kernel", "architecture", "fused-modconv", "fused-modconv-int", "too-big", "noise-maps-not-carried",
         "stylegan3-argument", "no-w-avg"],
)  # fmt: skip
def test_bad_stylegan2_arguments_refused_before_building(tmp_path: Path, edit: dict[str, Any], message: str) -> None:
    g = _tiny()
    kwargs = {k: v for k, v in g.init_kwargs.items() if k not in ("low_precision_dtype", "channels_last")}
    path = _official_sg2_pickle(g, {**kwargs, **edit}, ada=False, path=tmp_path / "bad.pkl")
    with pytest.raises(NetworkFormatError, match=message):
        load_network(path)


def test_foreign_module_class_in_a_stylegan2_pickle_is_refused(tmp_path: Path) -> None:
    g = _tiny()
    kwargs = {k: v for k, v in g.init_kwargs.items() if k not in ("low_precision_dtype", "channels_last")}
    rec = _as_reference_record(module_record(g, kwargs), ada=False)
    rec.args[0]["state"]["_modules"]["synthesis"].args[0]["state"]["_modules"]["b8"].args[0]["class_name"] = "Evil"
    (tmp_path / "evil.pkl").write_bytes(dumps({"G_ema": rec}))
    with pytest.raises(NetworkFormatError, match="synthesis.b8. is a Evil, not part of this network"):
        load_network(tmp_path / "evil.pkl")


# --- generate -------------------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cleftgan-hpc")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_generate_command_on_the_stylegan2_fixture(ref: dict[str, np.ndarray], tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    network = str(FIXTURE / "network.pkl")
    assert _run(["generate", "--network", network, "--seeds", "0-3", "--trunc", "0.7", "--out", str(out)]) == 0
    assert "wrote 4 image(s)" in capsys.readouterr().out
    assert list(ref["seeds"]) == [0, 1, 2, 3]  # the fixture's z are RandomState(seed).randn(1, 64), as generate's
    grid = np.asarray(Image.open(out))
    assert grid.shape == (128, 128, 3)
    expected = (np.clip(ref["img_psi07"] * 127.5 + 128, 0, 255)).astype(np.uint8).transpose(0, 2, 3, 1)
    tiles = [grid[:64, :64], grid[:64, 64:], grid[64:, :64], grid[64:, 64:]]
    for tile, exp in zip(tiles, expected, strict=True):
        assert np.abs(tile.astype(int) - exp.astype(int)).max() <= 1
    # convert, then generate from our file: the same images
    ckpt = tmp_path / "sg2.safetensors"
    assert _run(["convert", network, str(ckpt)]) == 0
    assert _run(["generate", "--network", str(ckpt), "--seeds", "0-3", "--trunc", "0.7", "--out",
                 str(tmp_path / "grid2.png")]) == 0  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid2.png")), grid)


def test_generate_transform_needs_stylegan3(tmp_path: Path) -> None:
    with pytest.raises(GenerateError, match="need a StyleGAN3 network"):
        _run(["generate", "--network", str(FIXTURE / "network.pkl"), "--seeds", "0", "--rotate", "10",
              "--out", str(tmp_path / "x.png")])  # fmt: skip


def test_synthesis_and_ppl_paths_take_a_stylegan2_network(tmp_path: Path) -> None:
    """What `synthesize` and `evaluate` call: seeded batches (pure in the seed), the manifest's
    network info, and PPL's mapping + fp32 synthesis."""
    from cleftgan_hpc.metrics.lpips import load_lpips, save_tiny_lpips
    from cleftgan_hpc.metrics.ppl import PPLSettings, path_lengths
    from cleftgan_hpc.synthesis.generate import generate_batch, load_generator, network_info

    g = load_generator(FIXTURE / "network.pkl")
    assert isinstance(g, StyleGAN2Generator)
    first = generate_batch(g, [3, 4], [None, None], 0.8, None, "cpu")
    assert first.shape == (2, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, generate_batch(g, [3, 4], [None, None], 0.8, None, "cpu"))
    json.dumps(network_info(g))
    save_tiny_lpips(tmp_path / "lpips.pt")
    lpips = load_lpips(tmp_path / "lpips.pt")
    lengths = path_lengths(g, lpips, 4, PPLSettings(), batch=2, seed=1)
    assert lengths.shape == (4,) and np.isfinite(lengths).all() and (lengths > 0).all()
    # the same draws at another batch size; only float rounding of the 1e-4 step differs
    np.testing.assert_allclose(lengths, path_lengths(g, lpips, 4, PPLSettings(), batch=4, seed=1), rtol=2e-2)

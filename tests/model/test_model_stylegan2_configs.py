"""StyleGAN2 configurations beyond the fixture: against the reference implementation's weights and
outputs (tests/fixtures/stylegan2/configs_reference.npz, made by running it here once), fast ops
against plain ops, double backward (path-length regularisation), and the parameter arithmetic of
limits.py.

To make the shipped outputs again (CLEFTGAN_UPDATE_GOLDEN=1), the reference runs in a child process (its top-level modules `training`, `torch_utils` and
`dnnlib` never enter this one) from the checkout named by CLEFTGAN_STYLEGAN3_REFERENCE, or from
`../.mirror/NVlabs+stylegan3/{checkout,repo}` beside the repository (a bare git mirror is
exported to a temporary directory first). Nothing of it is copied into the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cleftgan_hpc.model import StyleGAN2Generator, ops
from cleftgan_hpc.model.limits import stylegan2_generator_sizes
from cleftgan_hpc.model.stylegan2_layers import SynthesisLayer, ToRGBLayer

REFERENCE_ENV = "CLEFTGAN_STYLEGAN3_REFERENCE"
REPO = Path(__file__).resolve().parents[2]

# Configurations the fixture does not cover (constructor arguments of both implementations).
CONFIGS: dict[str, dict[str, Any]] = {
    "cond32-map8": dict(z_dim=16, c_dim=3, w_dim=24, img_resolution=32, img_channels=3, channel_base=512,
                        channel_max=32, mapping_kwargs=dict(embed_features=12, layer_features=20)),
    "orig16-gray-clamp": dict(z_dim=8, c_dim=0, w_dim=16, img_resolution=16, img_channels=1, channel_base=256,
                              channel_max=16, architecture="orig", conv_clamp=0.5,
                              mapping_kwargs=dict(num_layers=3, activation="linear")),
    "resnet32-k5-f3": dict(z_dim=8, c_dim=2, w_dim=8, img_resolution=32, img_channels=3, channel_base=256,
                           channel_max=16, architecture="resnet", kernel_size=5, resample_filter=[1, 2, 1],
                           mapping_kwargs=dict(num_layers=2)),
    "skip8-nonoise-k1": dict(z_dim=0, c_dim=4, w_dim=8, img_resolution=8, img_channels=3, channel_base=64,
                             channel_max=8, use_noise=False, kernel_size=1, mapping_kwargs=dict(num_layers=1)),
    "res4-linear": dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=4, img_channels=3, channel_base=32, channel_max=8,
                        activation="linear", conv_clamp=None),
}  # fmt: skip
BATCH, SEED = 3, 5

# The child: build each configuration in the reference with a fixed seed, move every parameter
# away from its initial value, and record its tensors and outputs.
_CHILD = r"""
import json, sys, types
import numpy as np, torch
ref_dir, configs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path.insert(0, ref_dir)
try:
    import pkg_resources  # noqa: F401  (the reference imports it; newer setuptools dropped it)
except ImportError:
    from packaging.version import parse
    sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
from training.networks_stylegan2 import Generator
torch.set_num_threads(1)
result = {}
for name, kw in configs.items():
    torch.manual_seed(SEED)
    G = Generator(**kw).eval()
    for k, v in G.state_dict().items():
        result[f"{name}/init/{k}"] = v.detach().clone().numpy()
    with torch.no_grad():
        for k, p in G.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if k.endswith("noise_strength") else 0.2))
        G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg))
        for k, v in G.state_dict().items():
            result[f"{name}/sd/{k}"] = v.detach().clone().numpy()
        n = BATCH
        z = torch.randn(n, G.z_dim)
        c = torch.nn.functional.one_hot(torch.arange(n) % max(G.c_dim, 1), G.c_dim).float() if G.c_dim else None
        ws = G.mapping(z, c)
        result[f"{name}/z"] = z.numpy()
        result[f"{name}/ws"] = ws.numpy()
        result[f"{name}/ws_trunc"] = G.mapping(z, c, truncation_psi=0.6, truncation_cutoff=2).numpy()
        for mode in ("const", "none", "random"):
            torch.manual_seed(123)
            result[f"{name}/img_{mode}"] = G.synthesis(ws, noise_mode=mode).numpy()
        result[f"{name}/img_g"] = G(z, c, truncation_psi=0.7, noise_mode="const").numpy()
np.savez(out, **result)
""".replace("SEED", str(SEED)).replace("BATCH", str(BATCH))


def _reference_checkout(tmp_dir: Path) -> Path | str:
    """A directory holding the reference's `training/networks_stylegan2.py`, or why there is none."""

    def ok(d: Path) -> bool:
        return (d / "training" / "networks_stylegan2.py").is_file()

    env = os.environ.get(REFERENCE_ENV)
    if env:
        return Path(env) if ok(Path(env)) else f"{REFERENCE_ENV}={env} holds no training/networks_stylegan2.py"
    base = REPO.parent / ".mirror" / "NVlabs+stylegan3"
    if ok(base / "checkout"):
        return base / "checkout"
    if (base / "repo").is_dir() and shutil.which("git"):
        archive = subprocess.run(["git", "--git-dir", str(base / "repo"), "archive", "HEAD", "training",
                                  "torch_utils", "dnnlib"], capture_output=True, timeout=120)  # fmt: skip
        if archive.returncode == 0:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "-x", "-C", str(tmp_dir)], input=archive.stdout, check=True, timeout=120)
            if ok(tmp_dir):
                return tmp_dir
    return f"no checkout of NVlabs/stylegan3: set {REFERENCE_ENV} or fetch it to {base}"


SHIPPED = REPO / "tests" / "fixtures" / "stylegan2" / "configs_reference.npz"  # the reference's outputs, run here once


@pytest.fixture(scope="module")
def reference_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The reference's weights and outputs for CONFIGS, from the shipped file; with
    CLEFTGAN_UPDATE_GOLDEN=1 they are made again by running the reference from a checkout."""
    if os.environ.get("CLEFTGAN_UPDATE_GOLDEN") == "1":
        tmp = tmp_path_factory.mktemp("stylegan3-reference")
        checkout = _reference_checkout(tmp / "checkout")
        if isinstance(checkout, str):
            pytest.fail(f"regenerating {SHIPPED.name} needs the reference: {checkout}")
        out = tmp / "outputs.npz"
        env = {**os.environ, "PYTHONPATH": ""}
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(checkout), json.dumps(CONFIGS), str(out)],
                              capture_output=True, text=True, timeout=600, cwd=tmp, env=env)  # fmt: skip
        assert proc.returncode == 0, f"the reference did not run from {checkout}: {proc.stderr[-2000:]}"
        with np.load(out) as d:
            np.savez_compressed(SHIPPED, **{k: d[k] for k in d.files})
    with np.load(SHIPPED, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def _ours(name: str, ref: dict[str, np.ndarray], prefix: str = "sd") -> StyleGAN2Generator:
    g = StyleGAN2Generator(**CONFIGS[name]).eval()
    state = {k[len(f"{name}/{prefix}/") :]: torch.from_numpy(v) for k, v in ref.items()
             if k.startswith(f"{name}/{prefix}/")}  # fmt: skip
    g.load_state_dict(state)  # strict: the reference's state-dict names are ours
    return g


def _labels(n: int, c_dim: int) -> torch.Tensor | None:
    return torch.nn.functional.one_hot(torch.arange(n) % max(c_dim, 1), c_dim).float() if c_dim else None


def _close_img(ours: torch.Tensor, expected: np.ndarray) -> None:
    assert tuple(ours.shape) == expected.shape
    err = (ours - torch.from_numpy(expected)).abs()
    assert err.max().item() <= 2e-3 and err.mean().item() <= 1e-4, (err.max().item(), err.mean().item())


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_the_reference(reference_outputs: dict[str, np.ndarray], name: str, plain: bool) -> None:
    ref = reference_outputs
    g = _ours(name, ref)
    z = torch.from_numpy(ref[f"{name}/z"])
    c = _labels(BATCH, g.c_dim)
    with torch.no_grad(), ops.plain_ops(plain):
        ws = g.mapping(z, c)
        assert (ws - torch.from_numpy(ref[f"{name}/ws"])).abs().max().item() <= 1e-4
        trunc = g.mapping(z, c, truncation_psi=0.6, truncation_cutoff=2)
        assert (trunc - torch.from_numpy(ref[f"{name}/ws_trunc"])).abs().max().item() <= 1e-4
        ws_ref = torch.from_numpy(ref[f"{name}/ws"])
        for mode in ("const", "none", "random"):
            torch.manual_seed(123)  # random noise is drawn in the reference's order: the same maps
            _close_img(g.synthesis(ws_ref, noise_mode=mode), ref[f"{name}/img_{mode}"])
        _close_img(g(z, c, truncation_psi=0.7), ref[f"{name}/img_g"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fresh_networks_start_from_the_references_weights(reference_outputs: dict[str, np.ndarray], name: str) -> None:
    """Built in the reference's order, the same torch seed gives the same initial weights."""
    torch.manual_seed(SEED)
    g = StyleGAN2Generator(**CONFIGS[name])
    for k, v in g.state_dict().items():
        assert torch.allclose(v, torch.from_numpy(reference_outputs[f"{name}/init/{k}"]), rtol=1e-6, atol=0), k


# --- without the reference ------------------------------------------------------------------------


def _fresh(name: str) -> StyleGAN2Generator:
    torch.manual_seed(0)
    g = StyleGAN2Generator(**CONFIGS[name]).eval()
    with torch.no_grad():
        for k, p in g.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if k.endswith("noise_strength") else 0.2))
        g.mapping.w_avg.normal_()
    return g


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_equals_plain(name: str) -> None:
    g = _fresh(name)
    z, c = torch.randn(4, g.z_dim), _labels(4, g.c_dim)
    with torch.no_grad():
        ws = g.mapping(z, c, truncation_psi=0.8)
        assert ws.shape == (4, g.num_ws, g.w_dim)
        for mode in ("const", "random"):
            torch.manual_seed(1)
            img = g.synthesis(ws, noise_mode=mode)
            with ops.plain_ops():
                torch.manual_seed(1)
                img_plain = g.synthesis(ws, noise_mode=mode)
            assert img.shape == (4, g.img_channels, g.img_resolution, g.img_resolution)
            assert torch.isfinite(img).all() and img.std().item() > 1e-4
            assert (img - img_plain).abs().max().item() <= 1e-4 * max(1.0, img_plain.abs().max().item())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_arithmetic_matches_the_module(name: str) -> None:
    g = StyleGAN2Generator(**CONFIGS[name])
    params, buffers = stylegan2_generator_sizes(g.init_kwargs)
    assert params == sum(p.numel() for p in g.parameters())
    assert buffers == sum(b.numel() for b in g.buffers())


def test_rules_cover_every_constructor_argument() -> None:
    """Every argument that reaches a StyleGAN2 constructor is checked by limits.py before building."""
    import inspect

    from cleftgan_hpc.model.limits import STYLEGAN2_GENERATOR_RULES
    from cleftgan_hpc.model.stylegan2 import StyleGAN2Synthesis, SynthesisBlock

    def params(fn: Any, skip: set[str]) -> set[str]:
        kinds = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        sig = inspect.signature(fn).parameters.values()
        return {p.name for p in sig if p.name != "self" and p.name not in skip and p.kind not in kinds}

    taken = {"in_channels", "out_channels", "w_dim", "resolution", "img_channels", "is_last", "use_fp16", "up",
             "conv_clamp", "resample_filter"}  # fmt: skip
    expected = (
        params(StyleGAN2Generator.__init__, set())
        | params(StyleGAN2Synthesis.__init__, {"w_dim", "img_resolution", "img_channels"})
        | params(SynthesisBlock.__init__, taken - {"conv_clamp", "resample_filter"})
        | params(SynthesisLayer.__init__, taken)
    )
    assert set(STYLEGAN2_GENERATOR_RULES) == expected


def test_chunked_synthesis_equals_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    g = _fresh("cond32-map8")
    z, c = torch.randn(5, g.z_dim), _labels(5, g.c_dim)
    with torch.no_grad():
        torch.manual_seed(3)
        whole = [g(z, c, noise_mode=m) for m in ("const", "random")]
        monkeypatch.setattr(importlib.import_module("cleftgan_hpc.model.ops.modulated_conv"), "LAYER_CHUNK_BYTES", 1)
        torch.manual_seed(3)
        chunked = [g(z, c, noise_mode=m) for m in ("const", "random")]
    for a, b in zip(whole, chunked, strict=True):  # random noise is drawn for the whole batch first
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_low_precision_path_runs() -> None:
    """The mixed-precision plumbing (CUDA: the num_fp16_res highest blocks in float16), exercised on CPU."""
    g = _fresh("cond32-map8")
    z, c = torch.randn(2, g.z_dim), _labels(2, g.c_dim)
    g16 = StyleGAN2Generator(**{**CONFIGS["cond32-map8"], "num_fp16_res": 2}).eval()
    g16.load_state_dict(g.state_dict())
    assert [b.use_fp16 for b in g16.synthesis.blocks()] == [False, False, True, True]
    with torch.no_grad():
        ref_img = g16(z, c)
        g16.synthesis.low_precision_on_cpu = True
        img = g16(z, c)
        assert torch.equal(g16(z, c, force_fp32=True), ref_img)
    assert img.dtype == torch.float32 and not torch.equal(img, ref_img)
    assert (img - ref_img).abs().max().item() < 0.05


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
@pytest.mark.parametrize("kind", ["up", "same", "torgb"])
def test_layers_double_backward(kind: str, plain: bool) -> None:
    """gradgradcheck through the modulated convolutions (path-length regularisation needs it)."""
    torch.manual_seed(0)
    if kind == "torgb":
        layer: torch.nn.Module = ToRGBLayer(2, 2, w_dim=3, conv_clamp=None)
        x = torch.randn(2, 2, 2, 2)
    else:
        up = 2 if kind == "up" else 1
        layer = SynthesisLayer(2, 2, w_dim=3, resolution=2 * up, up=up, conv_clamp=None)
        x = torch.randn(2, 2, 2, 2)
        with torch.no_grad():
            layer.noise_strength.fill_(0.3)
    layer = layer.double()
    w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    x = x.double().requires_grad_(True)

    weight = layer.weight.detach().clone().requires_grad_(True)
    args = () if kind == "torgb" else ("const",)

    def call(x: torch.Tensor, w: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"weight": weight}, (x, w, *args))

    with ops.plain_ops(plain):
        assert torch.autograd.gradcheck(call, (x, w, weight), fast_mode=True)
        assert torch.autograd.gradgradcheck(call, (x, w, weight), fast_mode=True)


def test_path_length_penalty_gradients_fast_equal_plain() -> None:
    """The path-length regulariser's pass: grad of (img * noise) w.r.t. ws with create_graph, then
    backward of its length into the parameters; fast and plain ops agree."""
    g = _fresh("resnet32-k5-f3").train()
    z, c = torch.randn(4, g.z_dim), _labels(4, g.c_dim)
    pl_noise = torch.randn(4, 3, 32, 32) / 32
    results = []
    for plain in (False, True):
        g.zero_grad(set_to_none=True)
        with ops.plain_ops(plain):
            ws = g.mapping(z, c)
            torch.manual_seed(9)
            img = g.synthesis(ws, noise_mode="random")
            (grad,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            (lengths - 0.5).square().mean().backward()
        results.append((lengths.detach(), [p.grad.clone() if p.grad is not None else None for p in g.parameters()]))
    (lf, gf), (lp, gp) = results
    assert torch.allclose(lf, lp, rtol=1e-4, atol=1e-6)
    assert any(a is not None and a.abs().sum() > 0 for a in gf)
    for a, b in zip(gf, gp, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), (a - b).abs().max()


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=12, img_channels=3)
    with pytest.raises(ValueError, match="odd"):
        StyleGAN2Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=3, kernel_size=2)
    with pytest.raises(ValueError, match="architecture"):
        StyleGAN2Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=3, architecture="dense")
    with pytest.raises(ValueError, match="leaves no channels"):
        StyleGAN2Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=64, img_channels=3, channel_base=32)
    g = StyleGAN2Generator(z_dim=4, c_dim=2, w_dim=4, img_resolution=8, img_channels=3, channel_base=64)
    assert g.init_kwargs["mapping_kwargs"] == {"num_layers": 8}  # StyleGAN2's default depth, recorded
    with pytest.raises(ValueError, match="conditional"):
        g(torch.randn(1, 4), None)
    with pytest.raises(ValueError, match="ws must be"):
        g.synthesis(torch.randn(1, 3, 4))

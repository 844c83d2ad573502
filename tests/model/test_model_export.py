"""`export`: networks as pickles for the reference implementation (NVlabs/stylegan3).

Round trip through our safe reader always runs. Loading in the reference runs its own
`legacy.load_network_pkl` in a child process with only the reference checkout on sys.path (found
as in test_model_stylegan2_configs: CLEFTGAN_STYLEGAN3_REFERENCE, else ../.mirror), and compares
its G_ema and D outputs with ours within the parity tolerances; skipped without a checkout.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model_stylegan2_configs import REFERENCE_ENV, REPO, _reference_checkout

from cleftgan_hpc.errors import NetworkFormatError, UnsafePickleError
from cleftgan_hpc.model import Discriminator, Network, StyleGAN2Generator, load_network, save_checkpoint
from cleftgan_hpc.model.export import (
    PICKLE_PROTOCOL,
    SNIFF_BYTES,
    _ExportedModule,
    _ExportPickler,
    _ReferenceClass,
    export_file,
    is_exported_pickle,
    load_exported,
    read_exported,
)

FIXTURES = REPO / "tests" / "fixtures"
SEEDS = [0, 1, 7]
PSI = 0.7


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


def _conditional_sg2(tmp: Path) -> Path:
    """Our own safetensors file: a conditional StyleGAN2 generator and discriminator."""
    torch.manual_seed(3)
    kw = dict(z_dim=16, c_dim=3, w_dim=16, img_resolution=16, img_channels=3, channel_base=256, channel_max=16)
    g = _perturbed(StyleGAN2Generator(**kw, mapping_kwargs=dict(num_layers=2)), 1)
    d = _perturbed(Discriminator(c_dim=3, img_resolution=16, img_channels=3, channel_base=256, channel_max=16), 2)
    g_ema = _perturbed(StyleGAN2Generator(**kw, mapping_kwargs=dict(num_layers=2)), 3)
    path = tmp / "cond_sg2.safetensors"
    save_checkpoint(Network(G=g, D=d, G_ema=g_ema, training_set_kwargs={"resolution": 16}), path)
    return path


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("export")
    return {
        "sg3t_64": FIXTURES / "stylegan3" / "sg3t_64" / "network.pkl",
        "sg2_64": FIXTURES / "stylegan2" / "sg2_64" / "network.pkl",
        "cond_sg2_16": _conditional_sg2(tmp),
    }


@pytest.fixture(scope="module")
def exported(networks: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("exported")
    out = {}
    for name, path in networks.items():
        out[name] = tmp / f"{name}.pkl"
        export_file(load_network(path), out[name])
    return out


def _checkout(tmp: Path) -> Path | str:
    """The shared helper's answer, else a checkout at ../ref/stylegan3 beside the repository."""
    found = _reference_checkout(tmp)
    beside = REPO.parent / "ref" / "stylegan3"
    if isinstance(found, str) and not os.environ.get(REFERENCE_ENV) and (beside / "legacy.py").is_file():
        return beside
    return found


def _labels(n: int, c_dim: int) -> torch.Tensor | None:
    return torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float() if c_dim else None


def _z(z_dim: int) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, z_dim) for s in SEEDS])).float()


# --- without the reference ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sg3t_64", "sg2_64", "cond_sg2_16"])
def test_round_trip_gives_identical_tensors(networks, exported, name: str) -> None:
    net, back = load_network(networks[name]), load_exported(exported[name])
    for key in ("G", "D", "G_ema"):
        a, b = getattr(net, key).state_dict(), getattr(back, key).state_dict()
        assert a.keys() == b.keys(), key
        for n in a:
            assert torch.equal(a[n], b[n]), f"{key}.{n}"
        assert type(getattr(net, key)) is type(getattr(back, key))
        assert not getattr(back, key).training
    assert back.training_set_kwargs == net.training_set_kwargs


def test_pickle_names_reference_classes_and_carries_no_code(exported) -> None:
    data = exported["sg3t_64"].read_bytes()
    globals_ = set()
    strings = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            globals_.add(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
    assert {"training.networks_stylegan3.Generator", "training.networks_stylegan2.Discriminator"} <= globals_
    assert not any("import" in s or "def " in s or "class " in s for s in strings)
    assert b"module_src" not in data and b"cleftgan" not in data
    assert "torch_utils.persistence._reconstruct_persistent_obj" not in globals_


def test_our_unpickler_refuses_other_globals() -> None:
    """The exported form's constructor call, naming a class that is not the reference's: refused."""
    buf = io.BytesIO()
    hostile = _ExportedModule(_ReferenceClass("os", "system"), {}, {})
    _ExportPickler(buf, protocol=PICKLE_PROTOCOL).dump({"G": hostile, "D": hostile, "G_ema": hostile})
    buf.seek(0)
    with pytest.raises(UnsafePickleError, match="os.system"):
        read_exported(buf)


def test_exported_pickles_are_told_apart(networks, exported) -> None:
    for name in networks:
        assert is_exported_pickle(exported[name].read_bytes()[:SNIFF_BYTES]), name
        assert not is_exported_pickle(networks[name].read_bytes()[:SNIFF_BYTES]), name


def test_missing_discriminator_is_an_error(networks, tmp_path: Path) -> None:
    net = load_network(networks["sg2_64"])
    net.D = None
    with pytest.raises(NetworkFormatError, match="discriminator"):
        export_file(net, tmp_path / "x.pkl")
    assert not (tmp_path / "x.pkl").exists() and not (tmp_path / "x.pkl.tmp").exists()


def test_export_command(networks, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cleftgan_hpc.cli import main

    out = tmp_path / "cli.pkl"
    assert main(["export", str(networks["sg2_64"]), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    assert torch.equal(load_exported(out).G_ema.mapping.w_avg, load_network(networks["sg2_64"]).G_ema.mapping.w_avg)


# --- in the reference -----------------------------------------------------------------------------

# The child: the reference's own loader, only its checkout on sys.path (none of this repository).
_CHILD = r"""
import json, sys, types
from pathlib import Path
ref_dir, repo, files, seeds, psi, out = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
sys.path = [p for p in sys.path if p and not (Path(p) / "cleftgan_hpc").exists()]
sys.path.insert(0, ref_dir)
try:
    import pkg_resources  # noqa: F401  (the reference imports it; newer setuptools dropped it)
except ImportError:
    from packaging.version import parse
    sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
import pickle
import numpy as np, torch
import legacy
torch.set_num_threads(1)
def cls_name(obj):  # the reference's class (under its persistence decorator), and that the module holds it
    orig = type(obj).__mro__[1]
    return f"{orig.__module__}.{orig.__name__}:{type(obj) is getattr(sys.modules[orig.__module__], orig.__name__)}"
result = {}
for name, path in files.items():
    with open(path, "rb") as f:
        data = legacy.load_network_pkl(f)
    G, D = data["G_ema"], data["D"]
    for k in ("G", "D", "G_ema"):  # as the reference saves its networks
        assert not data[k].training and not any(p.requires_grad for p in data[k].parameters()), k
    G2 = pickle.loads(pickle.dumps(G))  # the reference pickles it again in its own format
    result[f"{name}/classes"] = np.array([cls_name(data[k]) for k in ("G", "D", "G_ema")])
    z = torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, G.z_dim) for s in seeds])).float()
    c = torch.nn.functional.one_hot(torch.arange(len(seeds)) % G.c_dim, G.c_dim).float() if G.c_dim else None
    with torch.no_grad():
        result[f"{name}/ws"] = G.mapping(z, c, truncation_psi=psi).numpy()
        img = G(z, c, truncation_psi=psi, noise_mode="const")
        result[f"{name}/img"] = img.numpy()
        assert torch.equal(G2(z, c, truncation_psi=psi, noise_mode="const"), img)
        result[f"{name}/logits"] = D(img, c).numpy()
assert not [m for m in sys.modules if m.startswith("cleftgan")]
np.savez(out, **result)
"""


@pytest.fixture(scope="module")
def reference_outputs(exported, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("export-reference")
    checkout = _checkout(tmp / "checkout")
    if isinstance(checkout, str):
        pytest.skip(checkout)
    if not (checkout / "legacy.py").is_file():
        pytest.skip(f"the reference checkout {checkout} has no legacy.py")
    out = tmp / "reference.npz"
    files = json.dumps({k: str(v) for k, v in exported.items()})
    args = [str(checkout), str(REPO), files, json.dumps(SEEDS), str(PSI), str(out)]
    proc = subprocess.run([sys.executable, "-I", "-c", _CHILD, *args], capture_output=True, text=True, timeout=600,
                          cwd=tmp, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    if proc.returncode != 0 and "No module named" in proc.stderr and "'training'" not in proc.stderr:
        pytest.skip(f"the reference's dependencies are missing here: {proc.stderr.strip().splitlines()[-1:]}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as d:
        return dict(d)


@pytest.mark.parametrize("name", ["sg3t_64", "sg2_64", "cond_sg2_16"])
def test_reference_loads_export_with_equal_outputs(networks, reference_outputs, name: str) -> None:
    ref = reference_outputs
    sg3 = name.startswith("sg3")
    module = "training.networks_stylegan3" if sg3 else "training.networks_stylegan2"
    assert list(ref[f"{name}/classes"]) == [
        f"{module}.Generator:True",
        "training.networks_stylegan2.Discriminator:True",
        f"{module}.Generator:True",
    ]
    net = load_network(networks[name])
    g, d = net.G_ema, net.D
    z, c = _z(g.z_dim), _labels(len(SEEDS), g.c_dim)
    with torch.no_grad():
        ws = g.mapping(z, c, truncation_psi=PSI)
        img = g(z, c, truncation_psi=PSI, noise_mode="const")
        logits = d(img, c)
    assert (ws - torch.from_numpy(ref[f"{name}/ws"])).abs().max().item() <= 1e-4
    err = (img - torch.from_numpy(ref[f"{name}/img"])).abs()
    assert err.max().item() <= 2e-3 and err.mean().item() <= 1e-4, (err.max().item(), err.mean().item())
    assert (logits - torch.from_numpy(ref[f"{name}/logits"])).abs().max().item() <= 1e-3


def test_load_network_reads_an_exported_file(tmp_path: Path) -> None:
    """The loader every stage uses takes an exported pickle too (and gives what load_exported gives)."""
    src = Path(__file__).parents[1] / "fixtures" / "stylegan3" / "sg3t_64" / "network.pkl"
    out = tmp_path / "exported.pkl"
    export_file(load_network(src), out)
    a, b = load_network(out), load_exported(out)
    assert a.G_ema.state_dict().keys() == b.G_ema.state_dict().keys()
    assert all(torch.equal(x, y) for x, y in zip(a.G_ema.state_dict().values(), b.G_ema.state_dict().values(), strict=True))

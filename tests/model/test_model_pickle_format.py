"""Loader mechanics on pickles written in the reference's format for configs the fixture lacks.

The pickles are produced here from our own modules (the reference is not installed): every
module becomes a `torch_utils.persistence._reconstruct_persistent_obj(meta)` call with its
parameters, buffers, submodules and recorded constructor arguments (some positional, some numpy
scalars, EasyDicts), exactly the shapes of data the official files contain.
"""

from __future__ import annotations

import collections
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cleftgan_hpc.errors import NetworkFormatError
from cleftgan_hpc.model import Discriminator, Generator, load_network


def _fake_reference_modules() -> dict[str, types.ModuleType]:
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta: Any) -> Any:  # never called here: only pickled by name
        raise AssertionError

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    EasyDict.__module__, EasyDict.__qualname__ = util.__name__, "EasyDict"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]
    util.EasyDict = EasyDict  # type: ignore[attr-defined]
    return {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }


class _Record:
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def __reduce__(self):
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


def _record(module: nn.Module, args: tuple = (), kwargs: dict[str, Any] | None = None) -> _Record:
    easydict = sys.modules["dnnlib.util"].EasyDict
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(module._parameters),
        "_buffers": collections.OrderedDict(module._buffers),
        "_modules": collections.OrderedDict((k, _record(v)) for k, v in module._modules.items()),
        "_init_args": args,
        "_init_kwargs": easydict(kwargs or {}),
        "some_attribute": np.float64(0.5),
    }
    meta = dict(type="class", version=6, module_src="raise SystemExit('never run')", class_name=type(module).__name__,
                state=state)  # fmt: skip
    return _Record(meta)


def _write_reference_pickle(path: Path, g: Generator, d: Discriminator) -> None:
    fake = _fake_reference_modules()
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        gk = dict(g.init_kwargs)
        g_args = (gk.pop("z_dim"), gk.pop("c_dim"))  # positional, as some files record them
        gk = {k: (np.float64(v) if isinstance(v, float) else v) for k, v in gk.items()}
        dk = {k: v for k, v in d.init_kwargs.items() if k not in ("low_precision_dtype", "channels_last")}
        data = {
            "G": _record(g, g_args, gk),
            "D": _record(d, (), dk),
            "G_ema": _record(g, g_args, gk),
            "augment_pipe": None,
            "training_set_kwargs": sys.modules["dnnlib.util"].EasyDict(resolution=np.int64(g.img_resolution)),
        }
        path.write_bytes(pickle.dumps(data, protocol=4))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.mark.parametrize(
    "kw",
    [
        dict(c_dim=3, channel_base=1024, channel_max=32, conv_kernel=1, use_radial_filters=True),  # R, conditional
        dict(c_dim=0, channel_base=512, channel_max=16, mapping_kwargs=dict(num_layers=3)),
    ],
    ids=["R-cond", "T-mapping3"],
)
def test_reference_format_round_trip(tmp_path: Path, kw: dict[str, Any]) -> None:
    torch.manual_seed(0)
    kw = dict(kw)
    c_dim = kw.pop("c_dim")
    g = Generator(z_dim=12, c_dim=c_dim, w_dim=12, img_resolution=32, img_channels=3, **kw).eval()
    d = Discriminator(c_dim=c_dim, img_resolution=32, img_channels=3, channel_base=512, channel_max=16).eval()
    with torch.no_grad():
        for p in list(g.parameters()) + list(d.parameters()):
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "ref.pkl"
    _write_reference_pickle(path, g, d)
    net = load_network(path)
    assert net.augment_p is None and net.training_set_kwargs == {"resolution": 32}
    z = torch.randn(4, 12)
    c = torch.nn.functional.one_hot(torch.arange(4) % 3, 3).float() if c_dim else None
    with torch.no_grad():
        assert torch.equal(net.G_ema(z, c, truncation_psi=0.8), g(z, c, truncation_psi=0.8))
        img = g(z, c)
        assert torch.equal(net.D(img, c), d(img, c))
    assert net.G_ema.synthesis.layer_names == g.synthesis.layer_names


def test_unknown_constructor_argument_is_a_format_error(tmp_path: Path) -> None:
    g = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=256, channel_max=8)
    g.init_kwargs["shiny_new_option"] = 1
    d = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=8)
    _write_reference_pickle(tmp_path / "x.pkl", g, d)
    with pytest.raises(NetworkFormatError, match="shiny_new_option"):
        load_network(tmp_path / "x.pkl")

"""The limits of limits.py and the checked readers of official_pickle.py / checkpoint.py, in process.

The parameter-count formulas and the argument rules mirror the network constructors; the first
tests keep them from drifting apart.
"""

from __future__ import annotations

import inspect
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hostile_pickles import (
    NDARRAY,
    RECONSTRUCT,
    Call,
    Global,
    dtype,
    dumps,
    generator_only,
    legacy_storage_bytes,
    np_array,
    np_scalar,
    storage,
    tensor,
)
from safetensors.torch import save_file

from cleftgan_hpc.errors import NetworkFormatError, UnsafePickleError
from cleftgan_hpc.model import Discriminator, Generator, load_network
from cleftgan_hpc.model.discriminator import DiscriminatorBlock, DiscriminatorEpilogue
from cleftgan_hpc.model.limits import (
    D_BLOCK_RULES,
    D_EPILOGUE_RULES,
    D_MAPPING_RULES,
    DISCRIMINATOR_RULES,
    G2_MAPPING_RULES,
    G_MAPPING_RULES,
    GENERATOR_RULES,
    MAX_ARRAY_ELEMENTS,
    discriminator_parameter_count,
    generator_parameter_count,
)
from cleftgan_hpc.model.mapping import ConditionMapping, MappingNetwork
from cleftgan_hpc.model.official_pickle import restricted_load, to_python
from cleftgan_hpc.model.synthesis import SynthesisNetwork

G_CONFIGS = [
    dict(z_dim=12, c_dim=3, w_dim=12, img_resolution=32, img_channels=3, channel_base=1024, channel_max=32,
         conv_kernel=1, use_radial_filters=True),
    dict(z_dim=12, c_dim=0, w_dim=16, img_resolution=16, img_channels=1, channel_base=512, channel_max=16,
         mapping_kwargs=dict(num_layers=3)),
    dict(z_dim=0, c_dim=5, w_dim=8, img_resolution=64, img_channels=3, channel_base=2048, channel_max=64,
         num_layers=6, num_critical=1, mapping_kwargs=dict(num_layers=0)),
]  # fmt: skip
D_CONFIGS = [
    dict(c_dim=0, img_resolution=64, img_channels=3, channel_base=2048, channel_max=64),
    dict(c_dim=3, img_resolution=32, img_channels=3, channel_base=512, channel_max=16, cmap_dim=7,
         mapping_kwargs=dict(num_layers=0, embed_features=5)),
    dict(c_dim=3, img_resolution=16, img_channels=1, channel_base=512, channel_max=16,
         mapping_kwargs=dict(num_layers=2, layer_features=9), epilogue_kwargs=dict(mbstd_num_channels=0)),
]  # fmt: skip


@pytest.mark.parametrize("kw", G_CONFIGS)
def test_generator_parameter_count_matches_module(kw: dict[str, Any]) -> None:
    g = Generator(**kw)
    assert generator_parameter_count(g.init_kwargs) == sum(p.numel() for p in g.parameters())


@pytest.mark.parametrize("kw", D_CONFIGS)
def test_discriminator_parameter_count_matches_module(kw: dict[str, Any]) -> None:
    d = Discriminator(**kw)
    assert discriminator_parameter_count(d.init_kwargs) == sum(p.numel() for p in d.parameters())


def _params(fn: Any, skip: set[str]) -> set[str]:
    return {k for k in inspect.signature(fn).parameters if k != "self" and k not in skip}


def test_rules_cover_every_constructor_argument() -> None:
    synthesis = _params(SynthesisNetwork.__init__, set())
    assert set(GENERATOR_RULES) == _params(Generator.__init__, {"synthesis_kwargs"}) | synthesis
    mapping = _params(MappingNetwork.__init__, {"z_dim", "c_dim", "w_dim", "num_ws"})
    assert set(G2_MAPPING_RULES) == mapping  # StyleGAN2's mapping takes every argument, StyleGAN3's not these:
    assert set(G_MAPPING_RULES) == mapping - {"embed_features", "layer_features", "activation"}
    assert set(DISCRIMINATOR_RULES) == _params(Discriminator.__init__, set())
    assert set(D_MAPPING_RULES) == _params(ConditionMapping.__init__, {"c_dim", "cmap_dim"})
    taken = {"in_channels", "tmp_channels", "out_channels", "resolution", "img_channels", "first_layer_idx",
             "architecture", "conv_clamp", "use_fp16"}  # fmt: skip
    assert set(D_BLOCK_RULES) == _params(DiscriminatorBlock.__init__, taken)
    taken = {"in_channels", "cmap_dim", "resolution", "img_channels", "architecture", "conv_clamp"}
    assert set(D_EPILOGUE_RULES) == _params(DiscriminatorEpilogue.__init__, taken)


def _load(tmp_path: Path, data: Any, name: str = "x.pkl") -> Any:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else dumps(data))
    return load_network(path)


def test_filter_taps_bounded_within_per_argument_limits(tmp_path: Path) -> None:
    # filter_size and lrelu_upsampling are each within their limits, the filters they imply are not
    with pytest.raises(NetworkFormatError, match="tap filter"):
        _load(tmp_path, generator_only(kwargs=dict(filter_size=64, lrelu_upsampling=16, first_stopband=1.0)))


def test_degenerate_geometry_refused(tmp_path: Path) -> None:
    with pytest.raises(NetworkFormatError, match="num_critical 14 must be below num_layers 14"):
        _load(tmp_path, generator_only(kwargs=dict(num_critical=14)))


# --- recorded values ---


def test_shared_values_converted_once_and_counted_per_use() -> None:
    leaf = {"a": [1, 2, 3]}
    out = to_python({"x": leaf, "y": leaf})
    assert out == {"x": {"a": [1, 2, 3]}, "y": {"a": [1, 2, 3]}}
    x: list[Any] = [0]
    for _ in range(30):
        x = [x, x]
    start = time.perf_counter()
    with pytest.raises(NetworkFormatError, match="more than 100,000 values"):
        to_python(x)
    assert time.perf_counter() - start < 0.5


def _nested(depth: int) -> list[Any]:
    x: list[Any] = [1]
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize(
    "value,match",
    [
        (np.zeros(MAX_ARRAY_ELEMENTS + 1, dtype=np.int8), "numpy array of 65,537 elements"),
        (np.array([1 + 2j]), "not a plain number"),
        ({"a": b"bytes"}, "of type bytes"),
        ({"a": torch.zeros(1)}, "of type Tensor"),
        ({(1, 2): 3}, "dict key of type tuple"),
        ([10**30], "beyond 64 bits"),
        (_nested(40), "nested deeper than 32"),
    ],
)
def test_to_python_refuses(value: Any, match: str) -> None:
    with pytest.raises(NetworkFormatError, match=match):
        to_python(value)


def test_self_containing_dict() -> None:
    d: dict[str, Any] = {}
    d["me"] = d
    with pytest.raises(NetworkFormatError, match="contains itself"):
        to_python(d)


# --- numpy values in a pickle ---


def test_numpy_values_round_trip() -> None:
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    got = restricted_load(
        io.BytesIO(dumps({"a": np_array(a), "s": np_scalar(np.int64(7)), "b": np_scalar(np.bool_(True))}))
    )
    assert to_python(got) == {"a": a.tolist(), "s": 7, "b": True}


@pytest.mark.parametrize(
    "obj,match",
    [
        (Call(RECONSTRUCT, (NDARRAY, (1 << 40,), b"b")), "numpy array of 1,099,511,627,776 elements"),
        (Call(RECONSTRUCT, (NDARRAY, (0,), b"b"), (1, (1 << 20,), dtype("O", "|"), False, [1])), "dtype 'O'"),
        (Call(RECONSTRUCT, (NDARRAY, (0,), b"b"), (1, (1 << 20,), dtype("f8"), False, b"12345678")), "does not match"),
        (Call(RECONSTRUCT, (NDARRAY, (0,), b"b"), (1, (2,), dtype("V8"), False, b"0" * 16)), "dtype 'V8'"),
        (
            Call(
                RECONSTRUCT,
                (NDARRAY, (0,), b"b"),
                (
                    1,
                    (1,),
                    Call(dtype().func, ("f8", False, True), (3, "<", None, ("a",), {}, 8, 8, 0)),
                    False,
                    b"1" * 8,
                ),
            ),
            "structured",
        ),
        (Call(Global("numpy._core.multiarray", "scalar"), (dtype("f8"), b"123")), "wrong size"),
    ],
    ids=["huge-reconstruct", "object-array", "shape-vs-data", "void-dtype", "structured-dtype", "scalar-size"],
)
def test_numpy_refusals(obj: Any, match: str) -> None:
    with pytest.raises(NetworkFormatError, match=match):
        restricted_load(io.BytesIO(dumps({"x": obj})))


# --- embedded tensor storages ---


def test_legacy_storage_declaring_more_than_it_carries(tmp_path: Path) -> None:
    b = legacy_storage_bytes(torch.zeros(4))
    n = 1 << 28  # 1 GiB of float32, declared in both places the legacy stream has a size
    b = b.replace(b"K\x04Ntq", b"J" + n.to_bytes(4, "little") + b"Ntq", 1).replace(
        (4).to_bytes(8, "little"), n.to_bytes(8, "little"), 1
    )
    with pytest.raises(NetworkFormatError, match="declares 1,073,741,824 bytes but carries 16"):
        restricted_load(io.BytesIO(dumps(storage(b))))


def test_legacy_storage_sizes_disagree() -> None:
    b = legacy_storage_bytes(torch.zeros(4)).replace((4).to_bytes(8, "little"), (5).to_bytes(8, "little"), 1)
    with pytest.raises(NetworkFormatError, match="declares 4 elements, then 5"):
        restricted_load(io.BytesIO(dumps(storage(b))))


def test_storage_with_code_is_refused(tmp_path: Path) -> None:
    class _Evil:
        def __reduce__(self):
            return (print, ("ran",))

    buf = io.BytesIO()
    torch.save(_Evil(), buf, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError, match="print, which is not on the allow-list"):
        restricted_load(io.BytesIO(dumps(storage(buf.getvalue()))))


def test_zip_storage_stored_entries_load() -> None:
    """torch never embeds zip-format storages in network pickles, but a stored (uncompressed) one reads fine."""
    buf = io.BytesIO()
    t = torch.arange(5, dtype=torch.float32)
    torch.save(torch.TypedStorage(wrap_storage=t.untyped_storage(), dtype=t.dtype, _internal=True), buf)
    assert zipfile.is_zipfile(io.BytesIO(buf.getvalue()))
    rebuilt = Call(tensor(t).func, (storage(buf.getvalue()), 0, (5,), (1,), False, None))
    assert torch.equal(restricted_load(io.BytesIO(dumps(rebuilt))), t)


def test_expanded_tensor_is_refused(tmp_path: Path) -> None:
    """A zero-stride view claims any shape on one stored element; the loader counts held elements."""
    data = generator_only()
    mapping = data["G_ema"].args[0]["state"]["_modules"]["mapping"].args[0]["state"]
    mapping["_buffers"]["w_avg"] = tensor(torch.zeros(1), shape=(1 << 30,), stride=(0,))
    with pytest.raises(NetworkFormatError, match="claims 1,073,741,824 elements but its storage holds 1"):
        _load(tmp_path, data)


def test_view_past_its_storage_is_refused() -> None:
    """torch would grow a resizable storage to fit such a view; ours are fixed, and checked first."""
    t = tensor(torch.zeros(4), shape=(1 << 28,), stride=(1,))
    with pytest.raises(NetworkFormatError, match="reaches past its storage of 4 elements"):
        restricted_load(io.BytesIO(dumps(t)))


def test_module_record_containing_itself(tmp_path: Path) -> None:
    """Built by REDUCE, a record cannot contain itself; a later BUILD could, so BUILD is refused."""
    data = generator_only()
    rec = data["G_ema"]
    rec.state = {"state": {**rec.args[0]["state"], "_modules": {"loop": rec}}}
    with pytest.raises(NetworkFormatError, match="modifies a persistent object record"):
        _load(tmp_path, data)


# --- our safetensors network file ---


def _network_file(path: Path, config: Any, tensors: dict[str, torch.Tensor] | None = None, **meta: str) -> Path:
    metadata = {"format": "cleftgan-hpc-network", "version": "1",
                "config": config if isinstance(config, str) else json.dumps(config), **meta}  # fmt: skip
    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "config,meta,match",
    [
        ("[" * 100_000 + "]" * 100_000, {}, "config is not valid JSON"),
        ({"G_ema": [1, 2]}, {}, "G_ema is a list, not a JSON object"),
        ({"G_ema": {"z_dim": "8"}}, {}, "z_dim is '8', expected an integer"),
        ({"augment_p": "high"}, {}, "augment_p is 'high', not a number"),
        ({}, {"version": "one"}, "unreadable network file version 'one'"),
    ],
    ids=["deep-json", "kwargs-a-list", "kwarg-type", "augment-p", "version"],
)
def test_network_file_refusals(tmp_path: Path, config: Any, meta: dict[str, str], match: str) -> None:
    path = _network_file(tmp_path / "n.safetensors", config, **meta)
    with pytest.raises(NetworkFormatError, match=match):
        load_network(path)


def test_network_file_truncated(tmp_path: Path) -> None:
    path = _network_file(tmp_path / "n.safetensors", {}, {"a": torch.zeros(100)})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(NetworkFormatError, match="does not match the file size"):
        load_network(path)

"""Small hostile network files that ask for gigabytes or minutes are refused fast and small.

Each file is a few hundred bytes to a few hundred kilobytes, made only of allow-listed pickle
contents (or a well-formed safetensors file). Each is loaded in a fresh process that records the
time and the peak memory above its baseline: the refusal must be a CleftGanError within
MAX_SECONDS and MAX_EXTRA_MB. Without the limits each of them runs far past one or the other.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hostile_pickles import (
    NDARRAY,
    RECONSTRUCT,
    Call,
    dumps,
    generator_only,
    legacy_storage_bytes,
    load_bounded,
    record,
    storage,
    tensor,
)
from safetensors.torch import save_file

MAX_SECONDS = 2.0
MAX_EXTRA_MB = 200


def _assert_refused_fast(path: Path, match: str) -> None:
    out = load_bounded(path)
    assert out["error"] in ("NetworkFormatError", "UnsafePickleError"), out
    assert match in out["message"], out
    assert str(path) in out["message"] and "\n" not in out["message"], out
    assert out["seconds"] < MAX_SECONDS, out
    assert out["extra_mb"] < MAX_EXTRA_MB, out


def _dag(depth: int) -> list[Any]:
    x: list[Any] = [1]
    for _ in range(depth):
        x = [x, x]  # the same list twice: 2**depth paths through `depth` objects
    return x


# Hyperparameters that build a large network before any tensor is looked at: ~150M parameters
# (600 MB, seconds of random init), all within the per-argument limits, carried by no tensors.
_WIDE = dict(z_dim=512, w_dim=512, img_resolution=256, channel_base=1 << 20, channel_max=1024)
# A mapping network of 200,000 layers: minutes of module construction.
_DEEP = dict(mapping_kwargs={"num_layers": 200_000})
# Radial filters of 10,000 x 10,000 taps: gigabytes of float64 in the filter design.
_FILTERS = dict(filter_size=5000, conv_kernel=1, use_radial_filters=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"z_dim": Call(RECONSTRUCT, (NDARRAY, (50_000_000,), b"b"))}, "numpy array of 50,000,000 elements"),
        ({"mapping_kwargs": {"num_layers": 2, "x": _dag(60)}}, "nested deeper than 32 levels"),
        ({"mapping_kwargs": {"num_layers": 2, "x": _dag(25)}}, "values (counting shared ones at each use)"),
        (_WIDE, "but the file carries only"),
        (_DEEP, "num_layers is 200000"),
        (_FILTERS, "filter_size is 5000"),
    ],
    ids=["numpy-array-to-list", "shared-dag-2**60", "shared-dag-2**25", "wide-network", "deep-mapping", "huge-filters"],
)
def test_pickle_argument_bombs(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    path = tmp_path / "bomb.pkl"
    path.write_bytes(dumps(generator_only(kwargs=kwargs)))
    _assert_refused_fast(path, match)


def test_dag_in_training_set_kwargs(tmp_path: Path) -> None:
    path = tmp_path / "dag.pkl"
    data = generator_only()
    data["training_set_kwargs"] = {"labels": _dag(25)}
    path.write_bytes(dumps(data))
    _assert_refused_fast(path, "training_set_kwargs has more than")


@pytest.mark.parametrize("kwargs,match", [(_WIDE, "but the file carries only"), (_DEEP, "num_layers is 200000")],
                         ids=["wide-network", "deep-mapping"])  # fmt: skip
def test_safetensors_hyperparameter_bombs(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    from hostile_pickles import official_kwargs, tiny_networks

    g, _ = tiny_networks()
    config = {"G": None, "D": None, "G_ema": {**official_kwargs(g), **kwargs}, "augment_p": None}
    path = tmp_path / "bomb.safetensors"
    save_file({"G_ema.mapping.w_avg": torch.zeros(8)}, str(path),
              metadata={"format": "cleftgan-hpc-network", "version": "1", "config": json.dumps(config)})  # fmt: skip
    assert path.stat().st_size < 2000
    _assert_refused_fast(path, match)


def _zip_storage_record(inflated_bytes: int) -> bytes:
    """torch.save's zip format of a 4-float storage, its data entry replaced by `inflated_bytes`
    zeros, deflated (about 1000:1)."""
    buf = io.BytesIO()
    torch.save(torch.zeros(4).untyped_storage(), buf)
    src, out = zipfile.ZipFile(io.BytesIO(buf.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            data = src.read(info)
            if "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                data = bytes(inflated_bytes)
            z.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def test_compressed_storage_record(tmp_path: Path) -> None:
    g_ema = generator_only()["G_ema"]
    params = g_ema.args[0]["state"]["_modules"]["mapping"].args[0]["state"]["_buffers"]
    w_avg = tensor(torch.zeros(8))
    w_avg.args = (storage(_zip_storage_record(300 << 20)),) + w_avg.args[1:]
    params["w_avg"] = w_avg
    path = tmp_path / "zipbomb.pkl"
    path.write_bytes(dumps({"G_ema": g_ema}))
    assert path.stat().st_size < 1 << 20
    _assert_refused_fast(path, "compressed entries")


def _memo_bomb(slot: int) -> bytes:
    """None, stored in memo slot `slot`: CPython's unpickler sizes its memo table to the slot number."""
    return b"\x80\x04N" + b"r" + struct.pack("<I", slot) + b"."


def test_memo_slot_bomb(tmp_path: Path) -> None:
    path = tmp_path / "memo.pkl"
    path.write_bytes(_memo_bomb(1 << 25))  # 11 bytes; 512 MB of memo table without the check
    _assert_refused_fast(path, "names memo slot 33,554,432")


def test_memo_slot_bomb_inside_a_storage_record(tmp_path: Path) -> None:
    # the record's second pickle (torch's format version, 1001) also stores into a far memo slot
    version = b"\x80\x02M\xe9\x03."
    b = legacy_storage_bytes(torch.zeros(4)).replace(
        version, version[:-1] + b"r" + struct.pack("<I", 1 << 25) + b".", 1
    )
    data = generator_only()
    mapping = data["G_ema"].args[0]["state"]["_modules"]["mapping"].args[0]["state"]
    w_avg = tensor(torch.zeros(8))
    w_avg.args = (storage(b),) + w_avg.args[1:]
    mapping["_buffers"]["w_avg"] = w_avg
    path = tmp_path / "memo-in-storage.pkl"
    path.write_bytes(dumps(data))
    _assert_refused_fast(path, "names memo slot 33,554,432")


def test_valid_file_loads_in_the_same_harness(tmp_path: Path) -> None:
    """The harness itself: a valid file of the same kind loads without error."""
    path = tmp_path / "ok.pkl"
    path.write_bytes(dumps(generator_only()))
    out = load_bounded(path)
    assert out["error"] is None, out


def test_record_without_tensors_is_cheap(tmp_path: Path) -> None:
    """A bare record (no tensors at all) with official-size arguments: refused before building."""
    args = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3)
    rec = record(
        "Generator", {"_init_kwargs": args, "_modules": {"synthesis": record("S", {"_modules": {"input": None}})}}
    )
    path = tmp_path / "bare.pkl"
    path.write_bytes(dumps({"G_ema": rec}))
    assert path.stat().st_size < 1000
    _assert_refused_fast(path, "but the file carries only 0 tensor elements")

"""The restricted unpickler refuses anything outside its allow-list, and nothing from the file runs."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from cleftgan_hpc.errors import NetworkFormatError, UnsafePickleError
from cleftgan_hpc.model import load_network
from cleftgan_hpc.model.official_pickle import restricted_load


class _OsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Popen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("payload,global_name", [(_OsSystem, "system"), (_Popen, "Popen"), (_Eval, "eval")])
def test_malicious_pickle_is_refused(tmp_path: Path, payload, global_name: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    # Hidden inside an otherwise plausible network dict.
    path.write_bytes(pickle.dumps({"G": None, "training_set_kwargs": {"x": payload(marker)}}))
    with pytest.raises(UnsafePickleError, match=global_name) as info:
        load_network(path)
    assert "not on the allow-list" in str(info.value)
    assert not marker.exists(), "code from the pickle ran"


def test_error_names_the_global(tmp_path: Path) -> None:
    data = pickle.dumps(_OsSystem(tmp_path / "m"))
    with pytest.raises(UnsafePickleError) as info:
        restricted_load(io.BytesIO(data))
    assert ("posix.system" in str(info.value)) or ("os.system" in str(info.value)) or ("nt.system" in str(info.value))


def test_module_source_is_never_executed(tmp_path: Path) -> None:
    """A persistent-object record carrying code: recorded as data, never run."""
    marker = tmp_path / "ran"

    class _Persistent:
        def __reduce__(self):
            meta = dict(
                type="class", version=6, class_name="Generator", state={"_init_kwargs": {}},
                module_src=f"open({str(marker)!r}, 'w').write('x')",
            )  # fmt: skip
            return (_reconstruct, (meta,))

    def _reconstruct(meta):  # stands in for torch_utils.persistence._reconstruct_persistent_obj
        raise AssertionError("never called")

    _reconstruct.__module__, _reconstruct.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    import sys
    import types

    fake = types.ModuleType("torch_utils.persistence")
    fake._reconstruct_persistent_obj = _reconstruct  # type: ignore[attr-defined]
    sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = types.ModuleType("torch_utils"), fake
    try:
        data = pickle.dumps({"G_ema": _Persistent()})
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]
    path = tmp_path / "src.pkl"
    path.write_bytes(data)
    with pytest.raises(NetworkFormatError):  # a Generator record without tensors / arguments
        load_network(path)
    assert not marker.exists()


def test_storage_bytes_are_read_by_our_restricted_reader(tmp_path: Path) -> None:
    """torch.storage._load_from_bytes normally runs a full unpickler; our reader refuses code in it."""
    marker = tmp_path / "storage-ran"
    inner = io.BytesIO()
    torch.save(_OsSystem(marker), inner, _use_new_zipfile_serialization=False)

    class _Storage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (inner.getvalue(),))

    path = tmp_path / "storage.pkl"
    path.write_bytes(pickle.dumps({"G": _Storage()}))
    with pytest.raises(UnsafePickleError):
        load_network(path)
    assert not marker.exists()


def test_not_a_network_file(tmp_path: Path) -> None:
    p = tmp_path / "junk.bin"
    p.write_bytes(b"hello world, not a network")
    with pytest.raises(NetworkFormatError):
        load_network(p)
    p2 = tmp_path / "list.pkl"
    p2.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(NetworkFormatError, match="top level"):
        load_network(p2)
    p3 = tmp_path / "trunc.pkl"
    p3.write_bytes(pickle.dumps({"G": None, "D": None})[:-5])
    with pytest.raises(NetworkFormatError):
        load_network(p3)
    with pytest.raises(NetworkFormatError, match="cannot open"):
        load_network(tmp_path / "missing.pkl")


def test_fuzzed_pickles_load_or_fail_clearly(tmp_path: Path) -> None:
    """Random byte changes and cuts of a valid pickle: each loads, or raises one CleftGanError line.

    (A fixed seed; every mutation that once escaped as another exception or took seconds is a
    case in test_model_convert_malformed.py, test_model_pickle_bombs.py or test_model_limits.py.)
    """
    import random
    import time

    from hostile_pickles import dumps, network_pickle

    from cleftgan_hpc.errors import CleftGanError

    data = dumps(network_pickle())
    rng = random.Random(1234)
    path = tmp_path / "fuzz.pkl"
    start = time.perf_counter()
    for _ in range(200):
        b = bytearray(data)
        for _ in range(rng.choice([1, 2, 4, 8])):
            b[rng.randrange(len(b))] = rng.randrange(256)
        path.write_bytes(bytes(b[: rng.randrange(len(b))] if rng.random() < 0.1 else b))
        try:
            load_network(path)
        except CleftGanError as e:
            assert "\n" not in str(e) and str(path) in str(e)
    assert time.perf_counter() - start < 60

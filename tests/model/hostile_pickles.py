"""Hand-built network pickles for the loader's hostile-input tests, and a bounded loader run.

`dumps` writes pickle opcodes directly, so a test can name any global without importing it, share
one object between several places (a DAG) or put a list inside itself, exactly as a hostile file
would. `network_pickle` builds a complete, valid pickle in the reference's format from our own
modules; the tests then change one thing in it.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

_NO_STATE = object()


@dataclass(frozen=True)
class Global:
    """`module.name`, written as a GLOBAL opcode (never imported here)."""

    module: str
    name: str


@dataclass(eq=False)
class Call:
    """func(*args), then BUILD(state) when a state is given."""

    func: Any
    args: tuple
    state: Any = field(default=_NO_STATE)


@dataclass(eq=False)
class Raw:
    """Opcodes pushing one object, written as they are."""

    data: bytes


def dumps(obj: Any) -> bytes:
    """The pickle (protocol 4 opcodes, no framing) of a tree of plain values, Global, Call and Raw."""
    out = bytearray(b"\x80\x04")
    memo: dict[int, int] = {}
    alive: list[Any] = []  # keeps every memoised object alive, so no id is reused

    def put(o: Any) -> None:
        memo[id(o)] = len(memo)
        alive.append(o)
        out.extend(b"r" + struct.pack("<I", memo[id(o)]))

    def emit(o: Any) -> None:
        if id(o) in memo:
            out.extend(b"j" + struct.pack("<I", memo[id(o)]))
        elif o is None:
            out.extend(b"N")
        elif o is True or o is False:
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            if -(2**31) <= o < 2**31:
                out.extend(b"J" + struct.pack("<i", o))
            else:
                enc = pickle.encode_long(o)  # type: ignore[attr-defined]
                out.extend((b"\x8a" + bytes([len(enc)])) if len(enc) < 256 else (b"\x8b" + struct.pack("<i", len(enc))))
                out.extend(enc)
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, str):
            enc = o.encode()
            out.extend(b"X" + struct.pack("<I", len(enc)) + enc)
        elif isinstance(o, bytes):
            out.extend(b"B" + struct.pack("<I", len(o)) + o)
        elif isinstance(o, Global):
            out.extend(f"c{o.module}\n{o.name}\n".encode())
        elif isinstance(o, Raw):
            out.extend(o.data)
        elif isinstance(o, list):
            out.extend(b"]")
            put(o)
            if o:
                out.extend(b"(")
                for x in o:
                    emit(x)
                out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}")
            put(o)
            if o:
                out.extend(b"(")
                for k, v in o.items():
                    emit(k)
                    emit(v)
                out.extend(b"u")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for x in o:
                emit(x)
            out.extend(b"t")
            put(o)
        elif isinstance(o, Call):
            emit(o.func)
            emit(tuple(o.args))
            out.extend(b"R")
            put(o)
            if o.state is not _NO_STATE:
                emit(o.state)
                out.extend(b"b")
        else:
            raise TypeError(f"cannot write a {type(o).__name__}")

    emit(obj)
    out.extend(b".")
    return bytes(out)


# --- pieces of the reference's format ---

ORDERED_DICT = Global("collections", "OrderedDict")
NDARRAY = Global("numpy", "ndarray")
RECONSTRUCT = Global("numpy._core.multiarray", "_reconstruct")


def record(class_name: str, state: dict[str, Any]) -> Call:
    """torch_utils.persistence._reconstruct_persistent_obj(meta), as the reference pickles a module."""
    meta = {"type": "class", "version": 6, "module_src": "raise SystemExit('never run')",
            "class_name": class_name, "state": state}  # fmt: skip
    return Call(Global("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


def legacy_storage_bytes(t: torch.Tensor) -> bytes:
    """What torch's storage pickling embeds: torch.save's legacy stream of the tensor's storage."""
    t = t.detach().contiguous()
    buf = io.BytesIO()
    storage = torch.TypedStorage(wrap_storage=t.untyped_storage(), dtype=t.dtype, _internal=True)
    torch.save(storage, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def storage(data: bytes) -> Call:
    return Call(Global("torch.storage", "_load_from_bytes"), (data,))


def tensor(t: torch.Tensor, shape: tuple[int, ...] | None = None, stride: tuple[int, ...] | None = None) -> Call:
    """_rebuild_tensor_v2 of `t`'s storage; `shape`/`stride` override the view (hostile views)."""
    t = t.detach().contiguous()
    shape = tuple(t.shape) if shape is None else shape
    stride = tuple(t.stride()) if stride is None else stride
    args = (storage(legacy_storage_bytes(t)), 0, shape, stride, False, Call(ORDERED_DICT, ()))
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), args)


def dtype(name: str = "f8", order: str = "<") -> Call:
    return Call(Global("numpy", "dtype"), (name, False, True), (3, order, None, None, None, -1, -1, 0))


def np_array(a: np.ndarray) -> Call:
    """A numpy array exactly as numpy pickles it: _reconstruct(ndarray, (0,), b'b') + BUILD."""
    state = (1, tuple(a.shape), dtype(a.dtype.str[1:], a.dtype.str[0]), False, a.tobytes())
    return Call(RECONSTRUCT, (NDARRAY, (0,), b"b"), state)


def np_scalar(x: np.generic) -> Call:
    return Call(Global("numpy._core.multiarray", "scalar"), (dtype(x.dtype.str[1:], x.dtype.str[0]), x.tobytes()))


def module_record(m: nn.Module, kwargs: dict[str, Any] | None = None) -> Call:
    """A module as the reference's persistence pickles it: tensors, submodules, constructor arguments."""
    state = {
        "training": False,
        "_parameters": {k: (None if v is None else tensor(v)) for k, v in m._parameters.items()},
        "_buffers": {k: (None if v is None else tensor(v)) for k, v in m._buffers.items()},
        "_modules": {k: module_record(v) for k, v in m._modules.items() if v is not None},
        "_init_args": (),
        "_init_kwargs": dict(kwargs or {}),
    }
    return record(type(m).__name__, state)


def tiny_networks() -> tuple[nn.Module, nn.Module]:
    from cleftgan_hpc.model import Discriminator, Generator

    torch.manual_seed(0)
    g = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=256, channel_max=8)
    d = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=8)
    return g.eval(), d.eval()


def official_kwargs(module: nn.Module) -> dict[str, Any]:
    """The constructor arguments an official pickle would record for one of our modules."""
    return {k: v for k, v in module.init_kwargs.items() if k not in ("low_precision_dtype", "channels_last")}


def network_pickle(**top: Any) -> dict[str, Any]:
    """The top-level dict of a valid network pickle (tiny G, D, G_ema); keyword arguments replace entries."""
    g, d = tiny_networks()
    data: dict[str, Any] = {
        "G": module_record(g, official_kwargs(g)),
        "D": module_record(d, official_kwargs(d)),
        "G_ema": module_record(g, official_kwargs(g)),
        "augment_pipe": None,
        "training_set_kwargs": {"resolution": 16},
    }
    data.update(top)
    return data


def generator_only(state_edit: dict[str, Any] | None = None, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pickle dict with only G_ema: the tiny generator with its state entries / constructor arguments replaced."""
    g, _ = tiny_networks()
    rec = module_record(g, {**official_kwargs(g), **(kwargs or {})})
    rec.args[0]["state"].update(state_edit or {})
    return {"G_ema": rec}


# --- a bounded run of the loader in a child process ---

_CHILD = r"""
import json, resource, sys, time
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.model import load_network
import cleftgan_hpc.model.checkpoint, cleftgan_hpc.model.official_pickle  # imported before the baseline

# A safety net for the machine, should the loader misbehave: at most 3 GiB more address space.
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.RLIM_INFINITY))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    load_network(sys.argv[1])
    out = {"error": None, "message": ""}
except CleftGanError as e:
    out = {"error": type(e).__name__, "message": str(e)}
except BaseException as e:
    out = {"error": "unexpected " + type(e).__name__, "message": str(e)[:300]}
out["seconds"] = time.perf_counter() - start
out["extra_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""


def load_bounded(path: Path, timeout: float = 60) -> dict[str, Any]:
    """load_network(path) in a fresh process: the error (class name and message), seconds, and
    peak memory above the baseline after imports (MB)."""
    cmd = [sys.executable, "-c", _CHILD, str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=path.parent)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"the child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(lines[-1])

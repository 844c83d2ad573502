"""Reading the reference's network pickles safely, and turning them into our modules.

The reference pickles every network as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` carries the Python
source of the class and its `__dict__`. The reference executes that source on load. We never
do: a restricted unpickler resolves only an allow-list of globals (the persistence call becomes
a plain record of class name + state), and our own modules are built from the recorded
constructor arguments, then filled tensor by tensor.

Allowed is not the same as harmless: numpy's and torch's own pickling helpers can be asked for
gigabytes by a file of a few hundred bytes. So the numpy helpers and torch's storage loader are
replaced by checked versions of our own, every recorded value is converted within the limits of
limits.py, and the hyperparameters are checked against the tensors the file carries before any
module is built.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from ..errors import CleftGanError, NetworkFormatError, UnsafePickleError
from .discriminator import Discriminator
from .generator import Generator
from .limits import (
    DISCRIMINATOR_RULES,
    GENERATOR_RULES,
    MAX_ABS_INT,
    MAX_ARRAY_ELEMENTS,
    MAX_MEMO_GAP,
    MAX_MODULE_DEPTH,
    MAX_MODULE_RECORDS,
    MAX_NAME_CHARS,
    MAX_NESTING_DEPTH,
    MAX_NETWORK_PARAMETERS,
    MAX_STORAGES_PER_RECORD,
    MAX_TENSOR_DIMS,
    MAX_VALUE_NODES,
    MAX_ZIP_ENTRIES,
    STYLEGAN2_GENERATOR_RULES,
    check_arguments,
    discriminator_parameter_count,
    generator_parameter_count,
    one_line,
    stylegan2_generator_sizes,
)
from .stylegan2 import StyleGAN2Generator

# What malformed data makes library code raise: turned into NetworkFormatError at the loaders'
# boundary, so a bad file is one clear line, never a traceback. MemoryError too: the limits keep
# a file's demands small, and should one still fail, it is the file that asked.
MALFORMED_ERRORS: tuple[type[BaseException], ...] = (
    TypeError, ValueError, KeyError, IndexError, AttributeError, AssertionError, ArithmeticError,
    RuntimeError, EOFError, MemoryError, zipfile.BadZipFile, pickle.UnpicklingError,
)  # fmt: skip


class _CappedReader:
    """A file as pickletools reads it, asking for no more than the bytes left: a buffered file's
    read(n) allocates n bytes first, and a pickle can declare a length of 2**63."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.size = f, f.seek(0, os.SEEK_END)

    def read(self, n: int = -1) -> bytes:
        left = max(self.size - self.f.tell(), 0)
        return self.f.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.f.readline()

    def tell(self) -> int:
        return self.f.tell()


def check_memo_slots(f: BinaryIO) -> None:
    """Walk the opcodes of the pickle at f's position (building nothing), then rewind: refuses memo
    slot numbers that would make the unpickler allocate a table of that size (see MAX_MEMO_GAP)."""
    start = f.tell()
    reader = _CappedReader(f)
    f.seek(start)
    puts = 0
    try:
        for op, arg, _ in pickletools.genops(reader):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if arg > 2 * puts + MAX_MEMO_GAP:
                    raise NetworkFormatError(
                        f"the pickle names memo slot {arg:,} after only {puts:,} (corrupt or hostile)"
                    )
                puts += 1
            elif op.name == "MEMOIZE":
                puts += 1
    except ValueError as e:  # pickletools' word for unknown opcodes and truncation
        raise NetworkFormatError(f"cannot read the pickle: {one_line(str(e))}") from e
    finally:
        f.seek(start)


class _NoBuild:
    """Refuses a BUILD opcode: our records are made whole by their constructor, never patched after."""

    def __setstate__(self, state: Any) -> None:
        raise NetworkFormatError(f"the pickle modifies a {type(self).__name__.strip('_')} object after creating it")


@dataclass
class PersistentRecord:
    """What a reference persistent object becomes here: its class name and pickled __dict__."""

    class_name: str
    state: dict[str, Any]

    def __setstate__(self, state: Any) -> None:  # a BUILD opcode could swap in any class name or state
        raise NetworkFormatError("the pickle modifies a persistent object record after creating it")


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Stand-in for the reference's persistence hook: records, never executes `module_src`."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise NetworkFormatError("unexpected persistent object record in the pickle")
    name = meta.get("class_name")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise NetworkFormatError("a persistent object record has no proper class name")
    return PersistentRecord(class_name=name, state=meta["state"])


# --- embedded tensor storages ---------------------------------------------------------------------
# The reference's pickles hold each storage as `torch.storage._load_from_bytes(b)`, `b` being
# torch.save's legacy stream (a zip archive in principle). torch.load would allocate whatever
# size the record declares before reading a byte of it, and inflate compressed zip entries
# whole; so the records are read here, every size checked against the bytes actually present.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class _StorageType(_NoBuild):
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageRef(_NoBuild):
    key: str
    dtype: torch.dtype
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * torch._utils._element_size(self.dtype)


class _StorageUnpickler(pickle.Unpickler):
    """The pickles inside a storage record: plain values, torch.<X>Storage types and storage ids."""

    def __init__(self, f: BinaryIO, refs: dict[str, _StorageRef] | None = None) -> None:
        super().__init__(f)
        self.refs = refs

    @classmethod
    def load_one(cls, f: BinaryIO, refs: dict[str, _StorageRef] | None = None) -> Any:
        check_memo_slots(f)
        return cls(f, refs).load()

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafePickleError(
            f"refusing to load: an embedded tensor storage asks for the global {one_line(module, 80)}."
            f"{one_line(name, 80)}, which is not on the allow-list (nothing from the file was executed)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self.refs is None:
            raise NetworkFormatError("an embedded tensor storage has a storage id where none belongs")
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise NetworkFormatError("an embedded tensor storage has a malformed storage id")
        _, stype, key, _location, numel = pid[:5]
        if len(pid) == 6 and pid[5] is not None:
            raise NetworkFormatError("an embedded tensor storage is a view of another; network files have none")
        ok_key = isinstance(key, str) and len(key) <= MAX_NAME_CHARS
        ok_numel = isinstance(numel, int) and not isinstance(numel, bool) and numel >= 0
        if not isinstance(stype, _StorageType) or not ok_key or not ok_numel:
            raise NetworkFormatError("an embedded tensor storage has a malformed storage id")
        ref = _StorageRef(key, stype.dtype, numel)
        if self.refs.setdefault(key, ref) != ref:
            raise NetworkFormatError("an embedded tensor storage declares one storage twice, differently")
        if len(self.refs) > MAX_STORAGES_PER_RECORD:
            raise NetworkFormatError("an embedded tensor storage record holds too many storages")
        return ref


def _typed_storage(data: memoryview | bytes, dtype: torch.dtype) -> torch.TypedStorage:
    # Over a numpy array: the tensor keeps it alive, and the storage is not resizable, so a view
    # that reaches past it is an error instead of a silent resize to whatever size it names.
    raw = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    return torch.TypedStorage(wrap_storage=raw.untyped_storage(), dtype=dtype, _internal=True)


def _check_view(storage: Any, offset: Any, size: Any, stride: Any) -> None:
    """A tensor view must lie within one of our (fixed-size) storages and hold every element it
    claims: a zero-stride (expanded) view could claim any shape on one stored element."""
    if not isinstance(storage, torch.TypedStorage) or storage._untyped_storage.resizable():
        raise NetworkFormatError("a tensor in the pickle is not built on one of its embedded storages")
    dims_ok = isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= MAX_TENSOR_DIMS
    ints = [offset, *size, *stride] if dims_ok else []
    if not dims_ok or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in ints):
        raise NetworkFormatError("a tensor in the pickle has a malformed shape, stride or offset")
    total = storage._untyped_storage.nbytes() // torch._utils._element_size(storage.dtype)  # no deprecation warning
    numel, held = math.prod(size), total - offset
    if numel and offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True)) >= total:
        raise NetworkFormatError(f"a tensor in the pickle reaches past its storage of {total:,} elements")
    if numel > held:
        raise NetworkFormatError(f"a tensor in the pickle claims {numel:,} elements but its storage holds {held:,}")


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    _check_view(storage, offset, size, stride)
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, *rest)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    _check_view(storage, offset, size, stride)
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _storage_from_legacy(b: bytes) -> torch.TypedStorage:
    f = io.BytesIO(b)
    if _StorageUnpickler.load_one(f) != _LEGACY_MAGIC:
        raise NetworkFormatError("an embedded tensor storage is not a torch storage record")
    if _StorageUnpickler.load_one(f) != _LEGACY_PROTOCOL:
        raise NetworkFormatError("an embedded tensor storage has an unknown torch format version")
    info = _StorageUnpickler.load_one(f)
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise NetworkFormatError("an embedded tensor storage is not little-endian")
    refs: dict[str, _StorageRef] = {}
    top = _StorageUnpickler.load_one(f, refs)
    keys = _StorageUnpickler.load_one(f)
    if not isinstance(top, _StorageRef):
        raise NetworkFormatError("an embedded tensor storage record holds no storage")
    if not isinstance(keys, list) or len(keys) > len(refs) or set(keys) != set(refs):
        raise NetworkFormatError("an embedded tensor storage record lists its storages wrongly")
    view, pos, storages = memoryview(b), f.tell(), {}
    for key in keys:
        ref = refs[key]
        declared = int.from_bytes(view[pos : pos + 8], "little", signed=True) if pos + 8 <= len(b) else -1
        pos += 8
        if declared != ref.numel:  # also a file cut short
            raise NetworkFormatError(
                f"an embedded tensor storage declares {ref.numel} elements, then {declared} (corrupt or truncated)"
            )
        if ref.nbytes > len(b) - pos:  # checked before anything of that size is allocated
            raise NetworkFormatError(
                f"an embedded tensor storage declares {ref.nbytes:,} bytes but carries {max(len(b) - pos, 0):,}"
            )
        storages[key] = _typed_storage(view[pos : pos + ref.nbytes], ref.dtype)
        pos += ref.nbytes
    return storages[top.key]


def _read_capped(z: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    with z.open(info) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise NetworkFormatError(f"an embedded tensor storage entry {one_line(info.filename, 80)} is too large")
    return data


def _storage_from_zip(b: bytes) -> torch.TypedStorage:
    z = zipfile.ZipFile(io.BytesIO(b))
    infos = z.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise NetworkFormatError("an embedded tensor storage archive has too many entries")
    # torch stores its entries uncompressed; a compressed one could inflate to any size, and with
    # stored entries the declared sizes are bounded by the record itself.
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
        raise NetworkFormatError("an embedded tensor storage archive has compressed entries (torch writes none)")
    if sum(i.file_size for i in infos) > len(b):
        raise NetworkFormatError("an embedded tensor storage archive declares more data than it holds")
    pkl = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
    if len(pkl) != 1:
        raise NetworkFormatError("an embedded tensor storage archive has no data.pkl")
    prefix = pkl[0].filename[: -len("data.pkl")]
    names = {i.filename: i for i in infos}
    order = names.get(prefix + "byteorder")
    if order is not None and _read_capped(z, order, 16) != b"little":
        raise NetworkFormatError("an embedded tensor storage is not little-endian")
    refs: dict[str, _StorageRef] = {}
    top = _StorageUnpickler.load_one(io.BytesIO(_read_capped(z, pkl[0], len(b))), refs)
    if not isinstance(top, _StorageRef):
        raise NetworkFormatError("an embedded tensor storage record holds no storage")
    info = names.get(f"{prefix}data/{top.key}")
    if info is None or info.file_size != top.nbytes:
        raise NetworkFormatError("an embedded tensor storage archive lacks its data or declares another size")
    return _typed_storage(_read_capped(z, info, top.nbytes), top.dtype)


def _load_storage_from_bytes(b: Any) -> torch.TypedStorage:
    """torch.storage._load_from_bytes, reading the record ourselves: plain data, sizes bounded."""
    if not isinstance(b, (bytes, bytearray)):
        raise NetworkFormatError("an embedded tensor storage is not a byte string")
    b = bytes(b)
    return _storage_from_zip(b) if b[:4] == b"PK\x03\x04" else _storage_from_legacy(b)


# --- numpy values -------------------------------------------------------------------------------
# numpy's own helpers allocate whatever shape a pickle names (an uninitialised 2**40-element array
# costs nothing until touched), accept object arrays (whose __setstate__ can crash the process on
# a short list) and let a pickle rewrite a dtype's item size. Ours accept numbers only.

_NUMPY_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}


class _NumpyClassToken(_NoBuild):
    """What the pickle's numpy.ndarray resolves to: only an argument of _reconstruct, never a class
    a NEWOBJ opcode could instantiate (ndarray.__new__ would allocate any shape)."""


_NDARRAY = _NumpyClassToken()


class _PickledDtype:
    """numpy.dtype(name, align, copy) + BUILD(state), resolved only when an array or scalar uses it."""

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        del align, copy  # never a shared, in-place-modified dtype: resolved fresh below
        if not isinstance(name, str) or name not in _NUMPY_DTYPES:
            raise NetworkFormatError(f"the pickle holds a numpy dtype {one_line(repr(name), 40)}; numbers only")
        self.name, self.order = name, "|"

    def __setstate__(self, state: Any) -> None:
        if (
            not isinstance(state, tuple)
            or len(state) not in (8, 9)
            or state[1] not in ("<", ">", "|", "=")
            or any(x is not None for x in state[2:5])  # subarray, names, fields: structured dtypes
        ):
            raise NetworkFormatError("the pickle holds a malformed or structured numpy dtype")
        self.order = state[1]

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.name)
        return dtype.newbyteorder(self.order) if self.order in "<>" else dtype


class _CheckedArray(np.ndarray):
    """An ndarray whose pickled state is checked (numbers only, shape matches the data) before use."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise NetworkFormatError("the pickle holds a malformed numpy array")
        version, (shape, dtype, fortran, raw) = (state[0] if len(state) == 5 else 1), state[-4:]
        ok_shape = isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)
        if not (ok_shape and isinstance(dtype, _PickledDtype) and isinstance(raw, bytes) and isinstance(fortran, bool)):
            raise NetworkFormatError("the pickle holds a numpy array that is not plain numbers")
        real = dtype.resolve()
        if math.prod(shape) * real.itemsize != len(raw):
            raise NetworkFormatError("the pickle holds a numpy array whose shape does not match its data")
        super().__setstate__((version, shape, real, fortran, raw))


def _numpy_dtype(name: Any, align: Any = False, copy: Any = True) -> _PickledDtype:
    """numpy.dtype(...) as a pickle calls it (a function: NEWOBJ cannot skip the check in __init__)."""
    return _PickledDtype(name, align, copy)


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> _CheckedArray:
    """numpy's _reconstruct (an empty array that the pickle then fills), refusing large shapes."""
    ok_shape = isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)
    if subtype is not _NDARRAY or not ok_shape or dtype not in (b"b", "b"):
        raise NetworkFormatError("the pickle holds a malformed numpy array")
    if math.prod(shape) > MAX_ARRAY_ELEMENTS:
        raise NetworkFormatError(f"the pickle asks for a numpy array of {math.prod(shape):,} elements")
    return np.ndarray.__new__(_CheckedArray, shape, np.int8)


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """numpy's scalar(dtype, bytes), numbers only."""
    if not isinstance(dtype, _PickledDtype) or not isinstance(data, bytes):
        raise NetworkFormatError("the pickle holds a numpy scalar that is not a plain number")
    real = dtype.resolve()
    if len(data) != real.itemsize:
        raise NetworkFormatError("the pickle holds a numpy scalar of the wrong size")
    return np.frombuffer(data, dtype=real)[0]


# (module, name) -> the object it resolves to. Everything else is refused.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("dnnlib.util", "EasyDict"): dict,
    ("dnnlib", "EasyDict"): dict,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _numpy_dtype,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _numpy_reconstruct
    _ALLOWED[(_mod, "scalar")] = _numpy_scalar


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals; anything else raises UnsafePickleError."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"refusing to load: the pickle asks for the global {one_line(module, 80)}.{one_line(name, 80)}, "
                "which is not on the allow-list of a network file (nothing from the file was executed)"
            )
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to load: the pickle uses persistent ids, which a network file never has")


def restricted_load(f: BinaryIO) -> Any:
    """Unpickle `f` with the allow-list; raises UnsafePickleError or NetworkFormatError."""
    try:
        check_memo_slots(f)
        return RestrictedUnpickler(f).load()
    except CleftGanError:
        raise
    except Exception as e:  # truncated or corrupt pickles raise many kinds of errors
        raise NetworkFormatError(f"cannot read the pickle: {type(e).__name__}: {one_line(str(e))}") from e


# --- recorded values -------------------------------------------------------------------------------


def to_python(v: Any, what: str = "a recorded value") -> Any:
    """numpy scalars/arrays and containers -> plain JSON-able Python values, within limits.

    Each shared container is converted once (memo by id); its size is counted at every use, so a
    list holding the same list twice, 60 levels deep (2**60 paths), is refused at once rather than
    expanded here or later by json.dumps. Self-containing structures and anything that is not
    plain data (tensors, records, bytes, dtypes) are refused too.
    """
    memo: dict[int, tuple[Any, int]] = {}
    active: set[int] = set()

    def refuse(why: str) -> NetworkFormatError:
        return NetworkFormatError(f"{what} {why}")

    def number(x: Any) -> Any:
        if isinstance(x, int) and not -MAX_ABS_INT <= x <= MAX_ABS_INT:
            raise refuse("holds an integer beyond 64 bits")
        return x

    def conv(x: Any, depth: int) -> tuple[Any, int]:
        if x is None or isinstance(x, (bool, str, float)):
            return x, 1
        if isinstance(x, int):
            return number(int(x)), 1
        if isinstance(x, (np.generic, np.ndarray)) and x.dtype.kind not in "biuf":
            raise refuse(f"holds a numpy value of dtype {x.dtype}, not a plain number")
        if isinstance(x, np.generic):
            return number(x.item()), 1
        if isinstance(x, np.ndarray):
            if x.size > MAX_ARRAY_ELEMENTS:  # before .tolist(), which would make a Python object per element
                raise refuse(f"holds a numpy array of {x.size:,} elements (limit {MAX_ARRAY_ELEMENTS:,})")
            return x.tolist(), x.size + 1
        if not isinstance(x, (dict, list, tuple)):
            raise refuse(f"holds a value of type {type(x).__name__}, not plain data")
        key = id(x)
        if key in memo:
            return memo[key]
        if key in active:
            raise refuse("contains itself")
        if depth >= MAX_NESTING_DEPTH:
            raise refuse(f"is nested deeper than {MAX_NESTING_DEPTH} levels")
        active.add(key)
        count, out_list, out_dict = 1, [], {}
        items = x.items() if isinstance(x, dict) else enumerate(x)
        for k, item in items:
            if isinstance(x, dict) and not (k is None or isinstance(k, (str, int, float, np.generic))):
                raise refuse(f"has a dict key of type {type(k).__name__}")
            value, n = conv(item, depth + 1)
            count += n
            if count > MAX_VALUE_NODES:
                raise refuse(f"has more than {MAX_VALUE_NODES:,} values (counting shared ones at each use)")
            if isinstance(x, dict):
                out_dict[str(number(k.item() if isinstance(k, np.generic) else k))] = value
            else:
                out_list.append(value)
        active.discard(key)
        memo[key] = (out_dict if isinstance(x, dict) else out_list), count
        return memo[key]

    return conv(v, 0)[0]


# --- module records and tensors ---------------------------------------------------------------------


def _check_backed(what: str, name: str, t: torch.Tensor) -> None:
    """A stored tensor must hold its elements: an expanded (zero-stride) view could claim any shape."""
    if t.dim() > MAX_TENSOR_DIMS:
        raise NetworkFormatError(f"{what}: {name} has {t.dim()} dimensions")
    held = t.untyped_storage().nbytes() // max(t.element_size(), 1) - t.storage_offset()
    if t.numel() > held:
        raise NetworkFormatError(f"{what}: {name} claims {t.numel():,} elements but its storage holds {max(held, 0):,}")


def flatten_tensors(record: PersistentRecord, what: str = "network") -> dict[str, torch.Tensor]:
    """All parameters and buffers of a record tree, by their state-dict name."""
    out: dict[str, torch.Tensor] = {}
    active: set[int] = set()
    visited = 0

    def names(rec: PersistentRecord, key: str, prefix: str) -> dict[str, Any]:
        group = rec.state.get(key)
        if group is None:
            return {}
        if not isinstance(group, dict):
            raise NetworkFormatError(f"{what}: {prefix}{key} is a {type(group).__name__}, not a dict")
        for name in group:
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
                raise NetworkFormatError(f"{what}: {prefix}{key} has a malformed name {one_line(repr(name), 60)}")
        return group

    def walk(rec: PersistentRecord, prefix: str, depth: int) -> None:
        nonlocal visited
        visited += 1
        if visited > MAX_MODULE_RECORDS or depth > MAX_MODULE_DEPTH:
            raise NetworkFormatError(
                f"{what}: more than {MAX_MODULE_RECORDS} module records, or nested deeper than {MAX_MODULE_DEPTH}"
            )
        if id(rec) in active:
            raise NetworkFormatError(f"{what}: module {prefix or '(top)'} contains itself")
        active.add(id(rec))
        for key in ("_parameters", "_buffers"):
            for name, t in names(rec, key, prefix).items():
                if t is None:
                    continue
                if not isinstance(t, torch.Tensor):
                    raise NetworkFormatError(f"{what}: {prefix}{name} is a {type(t).__name__}, not a tensor")
                _check_backed(what, prefix + name, t)
                out[prefix + name] = t.detach()
        for name, sub in names(rec, "_modules", prefix).items():
            if isinstance(sub, PersistentRecord):
                walk(sub, prefix + name + ".", depth + 1)
            elif sub is not None:
                raise NetworkFormatError(f"{what}: {prefix}{name} is not a network module record")
        active.discard(id(rec))

    walk(record, "", 0)
    return out


def copy_tensors(module: nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy every tensor of `module` from `tensors` by name; fail on missing, unexpected or mis-shaped ones."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}")
        if unexpected:
            shown = ", ".join(one_line(n, 80) for n in unexpected[:8])
            parts.append(f"unexpected {len(unexpected)} tensor(s): {shown}")
        raise NetworkFormatError(f"{what}: " + "; ".join(parts))
    for name, t in own.items():
        src = tensors[name]
        if tuple(src.shape) != tuple(t.shape):
            raise NetworkFormatError(f"{what}: {name} has shape {list(src.shape)}, expected {list(t.shape)}")
    with torch.no_grad():
        for name, t in own.items():
            t.copy_(tensors[name].to(t.dtype))


GENERATOR_ARCHITECTURES = ("stylegan3", "stylegan2")  # what a generator record or file entry can be


def build_network(
    key: str, kwargs: dict[str, Any], stored_elements: int, what: str, architecture: str = "stylegan3"
) -> Generator | StyleGAN2Generator | Discriminator:
    """Generator (key G / G_ema; `architecture` "stylegan3" or "stylegan2") or Discriminator (D)
    from checked arguments, built only when the parameters they imply are within
    MAX_NETWORK_PARAMETERS and no more than the `stored_elements` tensor elements the file
    carries for it (the exact names and shapes are compared afterwards)."""
    is_d, sg2 = key == "D", key != "D" and architecture == "stylegan2"
    if not is_d and architecture not in GENERATOR_ARCHITECTURES:
        raise NetworkFormatError(f"{what}: unknown generator architecture {one_line(repr(architecture), 60)}")
    check_arguments(
        what, kwargs, DISCRIMINATOR_RULES if is_d else STYLEGAN2_GENERATOR_RULES if sg2 else GENERATOR_RULES
    )
    buffers = 0  # tensor elements beyond the parameters that the file must carry (StyleGAN2's noise maps)
    if is_d:
        needed = discriminator_parameter_count(kwargs)
    elif sg2:
        needed, buffers = stylegan2_generator_sizes(kwargs)
    else:
        needed = generator_parameter_count(kwargs, what)
    if needed > MAX_NETWORK_PARAMETERS:
        raise NetworkFormatError(
            f"{what}: its arguments describe {needed:,} parameters, over the limit of {MAX_NETWORK_PARAMETERS:,}"
        )
    if needed + buffers > stored_elements:
        described = f"{needed:,} parameters" + (f" and {buffers:,} buffer elements" if buffers else "")
        raise NetworkFormatError(
            f"{what}: its arguments describe {described} but the file carries only "
            f"{stored_elements:,} tensor elements for it"
        )
    cls = Discriminator if is_d else StyleGAN2Generator if sg2 else Generator
    try:
        return cls(**kwargs)
    except MALFORMED_ERRORS as e:
        raise NetworkFormatError(f"{what}: cannot build from its recorded arguments: {one_line(str(e))}") from e


_G_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
_D_POSITIONAL = ("c_dim", "img_resolution", "img_channels")
_G_SYNTHESIS_KEYS = {
    "channel_base", "channel_max", "num_layers", "num_critical", "first_cutoff", "first_stopband",
    "last_stopband_rel", "margin_size", "output_scale", "num_fp16_res", "conv_kernel", "filter_size",
    "lrelu_upsampling", "use_radial_filters", "conv_clamp", "magnitude_ema_beta",
}  # fmt: skip
_G_MAPPING_KEYS = {"num_layers", "lr_multiplier", "w_avg_beta"}
_D_KEYS = {
    "architecture", "channel_base", "channel_max", "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs",
    "mapping_kwargs", "epilogue_kwargs",
}  # fmt: skip
_D_BLOCK_KEYS = {"activation", "resample_filter", "fp16_channels_last", "freeze_layers"}
_D_MAPPING_KEYS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier"}
_D_EPILOGUE_KEYS = {"mbstd_group_size", "mbstd_num_channels", "activation"}


def _init_kwargs(record: PersistentRecord, positional: tuple[str, ...], what: str) -> dict[str, Any]:
    """The recorded constructor arguments as keyword arguments (plain values, within limits)."""
    if "_init_kwargs" not in record.state:
        raise NetworkFormatError(f"{what}: {record.class_name}: no recorded constructor arguments")
    args = record.state.get("_init_args")
    kwargs = record.state.get("_init_kwargs")
    if not isinstance(args, (list, tuple, type(None))) or not isinstance(kwargs, (dict, type(None))):
        raise NetworkFormatError(f"{what}: _init_args is not a list or _init_kwargs not a dict")
    args = to_python(list(args or ()), f"{what}: _init_args")
    kwargs = to_python(kwargs or {}, f"{what}: _init_kwargs")
    if len(args) > len(positional):
        raise NetworkFormatError(f"{what}: {len(args)} positional constructor arguments, expected <= {len(positional)}")
    kwargs.update(dict(zip(positional, args, strict=False)))
    return kwargs


def _check_keys(what: str, kwargs: Any, allowed: set[str]) -> None:
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise NetworkFormatError(f"{what}: the arguments are of type {type(kwargs).__name__}, not a dict")
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise NetworkFormatError(f"{what}: unsupported constructor argument(s) {one_line(str(unknown))}")


# StyleGAN2 (training.networks_stylegan2.Generator of the StyleGAN3 repository, and
# training.networks.Generator of StyleGAN2-ADA): the constructor arguments a pickle may record,
# and the classes its module records may name (a pickle records class names, not module paths).
_G2_SYNTHESIS_KEYS = {
    "channel_base", "channel_max", "num_fp16_res", "architecture", "resample_filter", "conv_clamp",
    "fp16_channels_last", "fused_modconv_default", "kernel_size", "use_noise", "activation",
}  # fmt: skip
_G2_MAPPING_KEYS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}
_G2_CLASSES = {
    "Generator", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer", "ToRGBLayer", "Conv2dLayer",
    "MappingNetwork", "FullyConnectedLayer",
}  # fmt: skip
# StyleGAN2-ADA's defaults where the StyleGAN3 repository's differ (applied when absent).
_ADA_SYNTHESIS_DEFAULTS = {"num_fp16_res": 0, "conv_clamp": None}
_ADA_MAPPING_DEFAULTS = {"w_avg_beta": 0.995}


def _synthesis_modules(record: PersistentRecord) -> dict[str, Any]:
    modules = record.state.get("_modules")
    synthesis = modules.get("synthesis") if isinstance(modules, dict) else None
    sub = synthesis.state.get("_modules") if isinstance(synthesis, PersistentRecord) else None
    return sub if isinstance(sub, dict) else {}


def generator_from_record(record: PersistentRecord, what: str = "G") -> Generator | StyleGAN2Generator:
    """Build our StyleGAN3 or StyleGAN2 generator (told apart by their synthesis networks) from a
    reference record and copy its tensors."""
    if record.class_name != "Generator":
        raise NetworkFormatError(f"{what}: expected a Generator, found {one_line(record.class_name, 80)}")
    sub = _synthesis_modules(record)
    if "b4" in sub and "input" not in sub:
        return stylegan2_generator_from_record(record, what)
    if "input" not in sub:
        raise NetworkFormatError(f"{what}: neither a StyleGAN3 nor a StyleGAN2 generator (no synthesis input or b4)")
    kwargs = _init_kwargs(record, _G_POSITIONAL, what)
    missing = sorted(set(_G_POSITIONAL) - set(kwargs))
    if missing:
        raise NetworkFormatError(f"{what}: constructor arguments lack {missing}")
    _check_keys(what, {k: v for k, v in kwargs.items() if k not in _G_POSITIONAL and k != "mapping_kwargs"},
                _G_SYNTHESIS_KEYS)  # fmt: skip
    _check_keys(f"{what}.mapping", kwargs.get("mapping_kwargs"), _G_MAPPING_KEYS)
    tensors = flatten_tensors(record, what)
    g = build_network("G", kwargs, sum(t.numel() for t in tensors.values()), what)
    copy_tensors(g, tensors, what)
    return g.eval()


def _check_class_names(record: PersistentRecord, allowed: set[str], what: str) -> None:
    """Every module record of the tree names one of `allowed` (flatten_tensors bounded the tree)."""
    stack = [(record, "")]
    while stack:
        rec, prefix = stack.pop()
        if rec.class_name not in allowed:
            raise NetworkFormatError(
                f"{what}: module {prefix or '(top)'} is a {one_line(rec.class_name, 80)}, not part of this network"
            )
        for name, sub in (rec.state.get("_modules") or {}).items():
            if isinstance(sub, PersistentRecord):
                stack.append((sub, f"{prefix}{name}."))


def stylegan2_generator_from_record(record: PersistentRecord, what: str = "G") -> StyleGAN2Generator:
    """Build our StyleGAN2Generator from a reference record (StyleGAN3 repository or StyleGAN2-ADA)."""
    kwargs = _init_kwargs(record, _G_POSITIONAL, what)
    missing = sorted(set(_G_POSITIONAL) - set(kwargs))
    if missing:
        raise NetworkFormatError(f"{what}: constructor arguments lack {missing}")
    # StyleGAN2-ADA takes the synthesis arguments as one dict and has other defaults; its blocks
    # lack the StyleGAN3 repository's fused_modconv_default attribute.
    b4 = _synthesis_modules(record).get("b4")
    ada = "synthesis_kwargs" in kwargs or (isinstance(b4, PersistentRecord) and "fused_modconv_default" not in b4.state)
    synthesis_kwargs = kwargs.pop("synthesis_kwargs", None) or {}
    _check_keys(f"{what}.synthesis_kwargs", synthesis_kwargs, _G2_SYNTHESIS_KEYS)
    twice = sorted(set(synthesis_kwargs) & set(kwargs))
    if twice:
        raise NetworkFormatError(f"{what}: constructor arguments given twice: {twice}")
    kwargs.update(synthesis_kwargs)
    _check_keys(what, {k: v for k, v in kwargs.items() if k not in _G_POSITIONAL and k != "mapping_kwargs"},
                _G2_SYNTHESIS_KEYS)  # fmt: skip
    _check_keys(f"{what}.mapping", kwargs.get("mapping_kwargs"), _G2_MAPPING_KEYS)
    if ada:
        kwargs = {**_ADA_SYNTHESIS_DEFAULTS, **kwargs}
        kwargs["mapping_kwargs"] = {**_ADA_MAPPING_DEFAULTS, **(kwargs.get("mapping_kwargs") or {})}
    tensors = flatten_tensors(record, what)
    _check_class_names(record, _G2_CLASSES, what)
    g = build_network("G", kwargs, sum(t.numel() for t in tensors.values()), what, architecture="stylegan2")
    copy_tensors(g, tensors, what)
    return g.eval()


def discriminator_from_record(record: PersistentRecord, what: str = "D") -> Discriminator:
    """Build our Discriminator from a reference record and copy its tensors."""
    if record.class_name != "Discriminator":
        raise NetworkFormatError(f"{what}: expected a Discriminator, found {one_line(record.class_name, 80)}")
    kwargs = _init_kwargs(record, _D_POSITIONAL, what)
    missing = sorted(set(_D_POSITIONAL) - set(kwargs))
    if missing:
        raise NetworkFormatError(f"{what}: constructor arguments lack {missing}")
    _check_keys(what, {k: v for k, v in kwargs.items() if k not in _D_POSITIONAL}, _D_KEYS)
    _check_keys(f"{what}.block_kwargs", kwargs.get("block_kwargs"), _D_BLOCK_KEYS)
    _check_keys(f"{what}.mapping_kwargs", kwargs.get("mapping_kwargs"), _D_MAPPING_KEYS)
    _check_keys(f"{what}.epilogue_kwargs", kwargs.get("epilogue_kwargs"), _D_EPILOGUE_KEYS)
    tensors = flatten_tensors(record, what)
    d = build_network("D", kwargs, sum(t.numel() for t in tensors.values()), what)
    copy_tensors(d, tensors, what)
    return d.eval()


def augment_p_from_record(record: Any) -> float | None:
    """The ADA probability `p` of a pickled augment pipe (None when there is no pipe)."""
    if record is None:
        return None
    if not isinstance(record, PersistentRecord):
        raise NetworkFormatError("augment_pipe is not a network module record")
    buffers = record.state.get("_buffers") or {}
    if not isinstance(buffers, dict):
        raise NetworkFormatError("augment_pipe: its buffers are not a dict")
    p = buffers.get("p")
    if not isinstance(p, torch.Tensor):
        return None
    if p.numel() != 1:
        raise NetworkFormatError(f"augment_pipe: p has {p.numel():,} elements, expected 1")
    _check_backed("augment_pipe", "p", p)
    return float(p)


def read_official_pickle(f: BinaryIO) -> dict[str, Any]:
    """The reference pickle as a dict: G/D/G_ema (our modules or None), augment_p, training_set_kwargs."""
    data = restricted_load(f)
    if not isinstance(data, dict):
        raise NetworkFormatError("not a network pickle: the top level is not a dict")
    if not any(isinstance(data.get(k), PersistentRecord) for k in ("G", "D", "G_ema")):
        raise NetworkFormatError("not a network pickle: none of G, D, G_ema found")
    out: dict[str, Any] = {}
    try:
        for key, build in (
            ("G", generator_from_record),
            ("D", discriminator_from_record),
            ("G_ema", generator_from_record),
        ):
            rec = data.get(key)
            if rec is not None and not isinstance(rec, PersistentRecord):
                raise NetworkFormatError(f"{key} is not a network module record")
            out[key] = build(rec, key) if rec is not None else None
        out["augment_p"] = augment_p_from_record(data.get("augment_pipe"))
        tsk = data.get("training_set_kwargs")
        out["training_set_kwargs"] = to_python(tsk, "training_set_kwargs") if isinstance(tsk, dict) else None
    except CleftGanError:
        raise
    except MALFORMED_ERRORS as e:  # a check above missed a malformation: still one line, never a traceback
        raise NetworkFormatError(f"malformed network pickle: {type(e).__name__}: {one_line(str(e))}") from e
    return out

"""Writing a network as a pickle that the reference implementation (NVlabs/stylegan3) loads into
its own classes, with its own `legacy.load_network_pkl`, and reading such a file back safely.

The reference's own pickles carry the Python source of every class and execute it on load. Ours
carry no code. Each network is pickled as three calls that the reference's environment already has:

    obj = functools.partial(<reference class>, **init_kwargs)()     # the class's own constructor
    obj = Module.requires_grad_(Module.eval(obj), False)            # as the reference saves networks
    torch.nn.Module.load_state_dict(obj, <state dict>)              # strict: every tensor, by name

The reference class is named by module and name only (a GLOBAL such as
`training.networks_stylegan3.Generator`), so unpickling needs the reference checkout on sys.path
and nothing of ours; the constructor is the reference's decorated (persistent) class, so the
object records its init_kwargs and pickles again like any of the reference's networks.
The state dict is applied through pickle's `state_setter` (REDUCE, then POP), which keeps the
object itself on the stack.

The top level is the reference's dict: G, D, G_ema, augment_pipe (None: the ADA pipe's
probability is not carried) and training_set_kwargs.
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from ..errors import CleftGanError, NetworkFormatError, UnsafePickleError
from .checkpoint import Network, generator_architecture
from .limits import one_line
from .official_pickle import (
    MALFORMED_ERRORS,
    RestrictedUnpickler,
    build_network,
    check_memo_slots,
    copy_tensors,
    to_python,
)

# The reference's classes, by the (module, name) a pickle names them with.
REFERENCE_CLASSES: dict[str, tuple[str, str]] = {
    "stylegan3": ("training.networks_stylegan3", "Generator"),
    "stylegan2": ("training.networks_stylegan2", "Generator"),
    "D": ("training.networks_stylegan2", "Discriminator"),
}
# Our constructor arguments that only choose how our modules run (memory format, CUDA low-precision
# type), not what they compute from their weights: the reference has no such arguments.
OURS_ONLY_ARGUMENTS = frozenset({"low_precision_dtype", "channels_last"})
PICKLE_PROTOCOL = 4  # STACK_GLOBAL resolves the dotted name Module.load_state_dict


class _ReferenceClass:
    """Stand-in for a reference class while pickling: written as a GLOBAL, never imported here."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # functools.partial wants a callable
        raise TypeError(f"{self.module}.{self.name} is the reference's class; it is only named here")


class _Call:
    """A call the pickle makes (REDUCE): func(*args)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args


class _ExportedModule:
    """One network as the pickle builds it: partial(cls, **kwargs)(), in eval mode without gradients,
    then load_state_dict(state)."""

    def __init__(self, cls: _ReferenceClass, kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        self.cls, self.kwargs, self.state = cls, kwargs, state


class _ExportPickler(pickle._Pickler):  # the Python pickler: its dispatch table can take our types
    dispatch = pickle._Pickler.dispatch.copy()

    def save_reference_class(self, obj: _ReferenceClass) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    def save_call(self, obj: _Call) -> None:
        self.save_reduce(obj.func, obj.args)

    def save_exported_module(self, obj: _ExportedModule) -> None:
        built = _Call(nn.Module.eval, _Call(functools.partial(obj.cls, **obj.kwargs)))
        self.save_reduce(
            nn.Module.requires_grad_, (built, False), state=obj.state, obj=obj, state_setter=nn.Module.load_state_dict
        )

    dispatch[_ReferenceClass] = save_reference_class
    dispatch[_Call] = save_call
    dispatch[_ExportedModule] = save_exported_module


def _exported(key: str, module: nn.Module) -> _ExportedModule:
    kind = "D" if key == "D" else generator_architecture(module)
    kwargs = to_python(module.init_kwargs, f"{key}: init_kwargs")  # type: ignore[union-attr]
    kwargs = {k: v for k, v in kwargs.items() if k not in OURS_ONLY_ARGUMENTS}
    state = collections.OrderedDict(
        (name, t.detach().to("cpu").contiguous().clone()) for name, t in module.state_dict().items()
    )
    return _ExportedModule(_ReferenceClass(*REFERENCE_CLASSES[kind]), kwargs, state)


def export_network(net: Network, f: BinaryIO) -> None:
    """Write `net` to `f` as a pickle for the reference's `legacy.load_network_pkl`.

    The reference asserts that G, D and G_ema are all present: a missing G is taken from G_ema
    (and the other way round); a missing D is an error.
    """
    g = net.G if net.G is not None else net.G_ema
    g_ema = net.G_ema if net.G_ema is not None else net.G
    if g is None or g_ema is None:
        raise NetworkFormatError("the network holds no generator to export")
    if net.D is None:
        raise NetworkFormatError("the network holds no discriminator; the reference's loader requires one")
    data = {
        "G": _exported("G", g),
        "D": _exported("D", net.D),
        "G_ema": _exported("G_ema", g_ema),
        "augment_pipe": None,
        "training_set_kwargs": to_python(net.training_set_kwargs, "training_set_kwargs"),
    }
    _ExportPickler(f, protocol=PICKLE_PROTOCOL).dump(data)


def export_file(net: Network, path: str | os.PathLike[str]) -> None:
    """export_network into `path`, atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            export_network(net, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- reading an exported file back, safely --------------------------------------------------------


class _ClassToken:
    """What a reference class name resolves to here: a name, nothing to instantiate."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __setstate__(self, state: Any) -> None:
        raise NetworkFormatError("the pickle modifies a class reference")


class _ModuleRecord:
    """A network as the exported pickle describes it: reference class, constructor kwargs, tensors."""

    def __init__(self, kind: str, kwargs: dict[str, Any]) -> None:
        self.kind, self.kwargs = kind, kwargs
        self.state: dict[str, torch.Tensor] | None = None

    def __setstate__(self, state: Any) -> None:
        raise NetworkFormatError("the pickle modifies a network record after creating it")


class _PartialRecord:
    """functools.partial(cls, **kwargs) as the pickle builds it; calling it makes a _ModuleRecord."""

    def __init__(self, func: Any) -> None:
        self.func, self.kwargs, self.used = func, None, False

    def __setstate__(self, state: Any) -> None:
        ok = isinstance(state, tuple) and len(state) == 4 and state[0] is self.func and state[1] == ()
        if not ok or not isinstance(state[2], dict) or state[3] not in (None, {}) or self.kwargs is not None:
            raise NetworkFormatError("the pickle holds a malformed constructor call")
        self.kwargs = state[2]

    def __call__(self, *args: Any, **kwargs: Any) -> _ModuleRecord:
        if args or kwargs or self.used or not isinstance(self.func, _ClassToken) or self.kwargs is None:
            raise NetworkFormatError("the pickle calls a network constructor unexpectedly")
        self.used = True
        return _ModuleRecord(self.func.kind, to_python(self.kwargs, f"{self.func.kind}: constructor arguments"))


def _load_state_dict(record: Any, state: Any) -> None:
    if not isinstance(record, _ModuleRecord) or record.state is not None:
        raise NetworkFormatError("the pickle loads tensors into something that is not a fresh network record")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):  # fmt: skip
        raise NetworkFormatError("the pickle's state dict is not a mapping of names to tensors")
    record.state = {k: v.detach() for k, v in state.items()}


def _eval(record: Any) -> _ModuleRecord:
    if not isinstance(record, _ModuleRecord) or record.state is not None:
        raise NetworkFormatError("the pickle switches something that is not a fresh network record to eval mode")
    return record


def _requires_grad(record: Any, flag: Any) -> _ModuleRecord:
    if not isinstance(record, _ModuleRecord) or record.state is not None or flag is not False:
        raise NetworkFormatError("the pickle sets gradients on something that is not a fresh network record")
    return record


_EXPORT_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch.nn.modules.module", "Module.eval"): _eval,
    ("torch.nn.modules.module", "Module.requires_grad_"): _requires_grad,
    ("functools", "partial"): _PartialRecord,
    ("torch.nn.modules.module", "Module.load_state_dict"): _load_state_dict,
    **{ref: _ClassToken(kind) for kind, ref in REFERENCE_CLASSES.items()},
}


class _ExportUnpickler(RestrictedUnpickler):
    """The network-file allow-list plus the few globals an exported pickle names."""

    def find_class(self, module: str, name: str) -> Any:
        target = _EXPORT_GLOBALS.get((module, name))
        return target if target is not None else super().find_class(module, name)


def _build(key: str, rec: Any) -> nn.Module:
    if not isinstance(rec, _ModuleRecord) or rec.state is None:
        raise NetworkFormatError(f"{key} is not an exported network record")
    if (key == "D") != (rec.kind == "D"):
        raise NetworkFormatError(f"{key}: the pickle names the wrong reference class ({rec.kind})")
    arch = "stylegan3" if rec.kind == "D" else rec.kind
    module = build_network(key, rec.kwargs, sum(t.numel() for t in rec.state.values()), key, architecture=arch)
    copy_tensors(module, rec.state, key)
    return module.eval()


def read_exported(f: BinaryIO) -> Network:
    """Read a pickle written by export_network with the restricted unpickler (nothing executed)."""
    try:
        check_memo_slots(f)
        data = _ExportUnpickler(f).load()
        if not isinstance(data, dict) or not all(k in data for k in ("G", "D", "G_ema")):
            raise NetworkFormatError("not an exported network pickle: the top level lacks G, D, G_ema")
        modules = {key: _build(key, data[key]) for key in ("G", "D", "G_ema")}
        tsk = data.get("training_set_kwargs")
        if tsk is not None and not isinstance(tsk, dict):
            raise NetworkFormatError("training_set_kwargs is not a dict")
        net = Network(**modules, training_set_kwargs=to_python(tsk, "training_set_kwargs"))
    except CleftGanError:
        raise
    except (*MALFORMED_ERRORS, pickle.PickleError) as e:
        raise NetworkFormatError(f"cannot read the exported pickle: {type(e).__name__}: {one_line(str(e))}") from e
    assert net.G_ema is not None
    net.G_ema.requires_grad_(False)
    return net


SNIFF_BYTES = 256  # an exported pickle names functools.partial and a reference class within these


def is_exported_pickle(head: bytes) -> bool:
    """Whether a file starting with `head` (its first SNIFF_BYTES) was written by export_network:
    for a loader to pick read_exported over the official-pickle reader. Only a dispatch hint;
    read_exported checks everything itself."""
    head = head[:SNIFF_BYTES]
    return head[:1] == b"\x80" and b"functools" in head and pickle.GLOBAL + b"training.networks_stylegan" in head


def load_exported(path: str | os.PathLike[str]) -> Network:
    """read_exported from a file, naming it in errors."""
    try:
        with open(path, "rb") as f:
            return read_exported(f)
    except OSError as e:
        raise NetworkFormatError(f"cannot open {path}: {e.strerror or e}") from e
    except (UnsafePickleError, NetworkFormatError) as e:
        raise type(e)(f"{path}: {e}") from e

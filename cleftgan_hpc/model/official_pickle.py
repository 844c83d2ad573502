"""Reading the reference's network pickles safely, and turning them into our modules.

The reference pickles every network as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` carries the Python
source of the class and its `__dict__`. The reference executes that source on load. We never
do: a restricted unpickler resolves only an allow-list of globals (the persistence call becomes
a plain record of class name + state), and our own modules are built from the recorded
constructor arguments, then filled tensor by tensor.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from ..errors import NetworkFormatError, UnsafePickleError
from .discriminator import Discriminator
from .generator import Generator


@dataclass
class PersistentRecord:
    """What a reference persistent object becomes here: its class name and pickled __dict__."""

    class_name: str
    state: dict[str, Any]


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Stand-in for the reference's persistence hook: records, never executes `module_src`."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise NetworkFormatError("unexpected persistent object record in the pickle")
    return PersistentRecord(class_name=str(meta.get("class_name")), state=meta["state"])


def _load_storage_from_bytes(b: bytes) -> Any:
    """torch.storage._load_from_bytes, but through torch's own weights-only unpickler."""
    try:
        return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafePickleError(f"refusing to load: an embedded tensor storage is not plain data ({first})") from e


def _numpy_global(module: str, name: str) -> Any:
    """numpy's pickling helpers, resolved from whichever numpy is installed."""
    if name == "ndarray":
        return np.ndarray
    if name == "dtype":
        return np.dtype
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray  # type: ignore[no-redef]
    return getattr(multiarray, name)


# (module, name) -> the object it resolves to. Everything else is refused.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("dnnlib.util", "EasyDict"): dict,
    ("dnnlib", "EasyDict"): dict,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    for _name in ("_reconstruct", "scalar"):
        _ALLOWED[(_mod, _name)] = (_mod, _name)
for _mod, _name in (("numpy", "ndarray"), ("numpy", "dtype")):
    _ALLOWED[(_mod, _name)] = (_mod, _name)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals; anything else raises UnsafePickleError."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"refusing to load: the pickle asks for the global {module}.{name}, which is not on the "
                "allow-list of a network file (nothing from the file was executed)"
            )
        if isinstance(target, tuple):
            return _numpy_global(*target)
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to load: the pickle uses persistent ids, which a network file never has")


def restricted_load(f: BinaryIO) -> Any:
    """Unpickle `f` with the allow-list; raises UnsafePickleError or NetworkFormatError."""
    try:
        return RestrictedUnpickler(f).load()
    except (UnsafePickleError, NetworkFormatError):
        raise
    except Exception as e:  # truncated or corrupt pickles raise many kinds of errors
        raise NetworkFormatError(f"cannot read the pickle: {type(e).__name__}: {e}") from e


def to_python(v: Any) -> Any:
    """numpy scalars/arrays and containers -> plain JSON-able Python values."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): to_python(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_python(x) for x in v]
    return v


def flatten_tensors(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """All parameters and buffers of a record tree, by their state-dict name."""
    out: dict[str, torch.Tensor] = {}
    for key in ("_parameters", "_buffers"):
        for name, t in (record.state.get(key) or {}).items():
            if t is not None:
                if not isinstance(t, torch.Tensor):
                    raise NetworkFormatError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
                out[prefix + name] = t.detach()
    for name, sub in (record.state.get("_modules") or {}).items():
        if isinstance(sub, PersistentRecord):
            out.update(flatten_tensors(sub, prefix + name + "."))
        elif sub is not None:
            raise NetworkFormatError(f"{prefix}{name} is not a network module record")
    return out


def copy_tensors(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Copy every tensor of `module` from `tensors` by name; fail on missing, unexpected or mis-shaped ones."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:8])}")
        raise NetworkFormatError(f"{what}: " + "; ".join(parts))
    for name, t in own.items():
        src = tensors[name]
        if tuple(src.shape) != tuple(t.shape):
            raise NetworkFormatError(f"{what}: {name} has shape {list(src.shape)}, expected {list(t.shape)}")
    with torch.no_grad():
        for name, t in own.items():
            t.copy_(tensors[name].to(t.dtype))


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


def _init_kwargs(record: PersistentRecord, positional: tuple[str, ...]) -> dict[str, Any]:
    """The recorded constructor arguments as keyword arguments."""
    args = to_python(record.state.get("_init_args") or [])
    kwargs = to_python(record.state.get("_init_kwargs") or {})
    if "_init_kwargs" not in record.state:
        raise NetworkFormatError(f"{record.class_name}: no recorded constructor arguments")
    if len(args) > len(positional):
        raise NetworkFormatError(f"{record.class_name}: unexpected positional constructor arguments {args}")
    kwargs.update(dict(zip(positional, args, strict=False)))
    return kwargs


def _check_keys(what: str, kwargs: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise NetworkFormatError(f"{what}: unsupported constructor argument(s) {unknown}")


def generator_from_record(record: PersistentRecord, what: str = "G") -> Generator:
    """Build our StyleGAN3 Generator from a reference record and copy its tensors."""
    if record.class_name != "Generator":
        raise NetworkFormatError(f"{what}: expected a Generator, found {record.class_name}")
    synthesis = (record.state.get("_modules") or {}).get("synthesis")
    if not isinstance(synthesis, PersistentRecord) or "input" not in (synthesis.state.get("_modules") or {}):
        raise NetworkFormatError(f"{what}: not a StyleGAN3 generator (StyleGAN2 generators are not supported)")
    kwargs = _init_kwargs(record, _G_POSITIONAL)
    mapping_kwargs = kwargs.pop("mapping_kwargs", None) or {}
    base = {k: kwargs.pop(k) for k in _G_POSITIONAL if k in kwargs}
    if len(base) != len(_G_POSITIONAL):
        raise NetworkFormatError(f"{what}: constructor arguments lack {sorted(set(_G_POSITIONAL) - set(base))}")
    _check_keys(what, kwargs, _G_SYNTHESIS_KEYS)
    _check_keys(f"{what}.mapping", mapping_kwargs, _G_MAPPING_KEYS)
    try:
        g = Generator(**base, mapping_kwargs=mapping_kwargs, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise NetworkFormatError(f"{what}: cannot build from its recorded arguments: {e}") from e
    copy_tensors(g, flatten_tensors(record), what)
    return g.eval()


def discriminator_from_record(record: PersistentRecord, what: str = "D") -> Discriminator:
    """Build our Discriminator from a reference record and copy its tensors."""
    if record.class_name != "Discriminator":
        raise NetworkFormatError(f"{what}: expected a Discriminator, found {record.class_name}")
    kwargs = _init_kwargs(record, _D_POSITIONAL)
    base = {k: kwargs.pop(k) for k in _D_POSITIONAL if k in kwargs}
    if len(base) != len(_D_POSITIONAL):
        raise NetworkFormatError(f"{what}: constructor arguments lack {sorted(set(_D_POSITIONAL) - set(base))}")
    _check_keys(what, kwargs, _D_KEYS)
    _check_keys(f"{what}.block_kwargs", kwargs.get("block_kwargs") or {}, _D_BLOCK_KEYS)
    _check_keys(f"{what}.mapping_kwargs", kwargs.get("mapping_kwargs") or {}, _D_MAPPING_KEYS)
    _check_keys(f"{what}.epilogue_kwargs", kwargs.get("epilogue_kwargs") or {}, _D_EPILOGUE_KEYS)
    try:
        d = Discriminator(**base, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise NetworkFormatError(f"{what}: cannot build from its recorded arguments: {e}") from e
    copy_tensors(d, flatten_tensors(record), what)
    return d.eval()


def augment_p_from_record(record: Any) -> float | None:
    """The ADA probability `p` of a pickled augment pipe (None when there is no pipe)."""
    if record is None:
        return None
    if not isinstance(record, PersistentRecord):
        raise NetworkFormatError("augment_pipe is not a network module record")
    p = (record.state.get("_buffers") or {}).get("p")
    return float(p) if isinstance(p, torch.Tensor) else None


def read_official_pickle(f: BinaryIO) -> dict[str, Any]:
    """The reference pickle as a dict: G/D/G_ema (our modules or None), augment_p, training_set_kwargs."""
    data = restricted_load(f)
    if not isinstance(data, dict):
        raise NetworkFormatError("not a network pickle: the top level is not a dict")
    if not any(isinstance(data.get(k), PersistentRecord) for k in ("G", "D", "G_ema")):
        raise NetworkFormatError("not a network pickle: none of G, D, G_ema found")
    out: dict[str, Any] = {}
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
    out["training_set_kwargs"] = to_python(tsk) if isinstance(tsk, dict) else None
    return out

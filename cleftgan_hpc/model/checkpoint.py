"""Our network file: one safetensors file, tensors plus a JSON header of hyperparameters. Nothing pickled.

Tensors are named `G.<state-dict name>`, `D.<...>`, `G_ema.<...>`; the safetensors metadata holds
`format` (= FORMAT), `version` and `config`: a JSON object with each network's constructor
arguments (null when absent), `augment_p`, `training_set_kwargs` and `architectures`, the class of
each generator ("stylegan3" or "stylegan2"; absent, as in files written before StyleGAN2: stylegan3).
A file holding a StyleGAN2 generator is version 2, so that a program older than StyleGAN2 support
refuses it with "newer than this program"; StyleGAN3-only files stay version 1.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CleftGanError, NetworkFormatError
from .discriminator import Discriminator
from .generator import Generator
from .limits import MAX_TENSOR_DIMS, one_line, quoted
from .official_pickle import GENERATOR_ARCHITECTURES, MALFORMED_ERRORS, build_network, copy_tensors, to_python
from .stylegan2 import StyleGAN2Generator

FORMAT = "cleftgan-hpc-network"
VERSION = 2  # the newest version this program reads and writes (1: StyleGAN3 generators only)
NETWORK_KEYS = ("G", "D", "G_ema")
GENERATOR_KEYS = ("G", "G_ema")


def generator_architecture(g: nn.Module) -> str:
    """The class a file records for a generator: "stylegan2" or "stylegan3"."""
    return "stylegan2" if isinstance(g, StyleGAN2Generator) else "stylegan3"


@dataclass
class Network:
    """A loaded network file: our modules (eval mode) plus the training metadata it carries."""

    G: Generator | StyleGAN2Generator | None = None
    D: Discriminator | None = None
    G_ema: Generator | StyleGAN2Generator | None = None
    augment_p: float | None = None
    training_set_kwargs: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other JSON metadata (free for callers)

    def generator(self) -> Generator | StyleGAN2Generator:
        """G_ema when present (the one to sample from), else G."""
        g = self.G_ema if self.G_ema is not None else self.G
        if g is None:
            raise NetworkFormatError("the network file holds no generator")
        return g


def save_checkpoint(net: Network, path: str | os.PathLike[str]) -> None:
    """Write `net` as one safetensors file (atomically: temp file, then rename)."""
    tensors: dict[str, torch.Tensor] = {}
    config: dict[str, Any] = {}
    for key in NETWORK_KEYS:
        module: nn.Module | None = getattr(net, key)
        config[key] = None if module is None else module.init_kwargs  # type: ignore[union-attr]
        if module is not None:
            for name, t in module.state_dict().items():
                tensors[f"{key}.{name}"] = t.detach().to("cpu").contiguous().clone()
    config["augment_p"] = net.augment_p
    config["training_set_kwargs"] = net.training_set_kwargs
    config["extra"] = net.extra
    config["architectures"] = {
        key: generator_architecture(getattr(net, key)) for key in GENERATOR_KEYS if getattr(net, key) is not None
    }
    version = 2 if "stylegan2" in config["architectures"].values() else 1
    metadata = {"format": FORMAT, "version": str(version), "config": json.dumps(to_python(config))}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


# Bytes per element of the safetensors dtypes a network file may hold.
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


def _bad(path: Path, why: str) -> NetworkFormatError:
    return NetworkFormatError(f"{path}: {why}")


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The safetensors header: our metadata, and each tensor's shape, checked against the bytes present.

    Nothing is built or loaded before this: the shapes are what the file really carries (each
    tensor's byte range matches its shape and dtype, the ranges tile the data exactly).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise _bad(path, "not a safetensors file (or truncated)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise _bad(path, "corrupt safetensors header") from e
    if not isinstance(header, dict):
        raise _bad(path, "corrupt safetensors header")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(path, "corrupt safetensors metadata")
    if meta.get("format") != FORMAT:
        found = quoted(meta.get("format"))
        raise _bad(path, f"a safetensors file, but not a cleftgan-hpc network file (format {found})")
    version = meta.get("version", "0")
    if not version.isdigit() or len(version) > 6:
        raise _bad(path, f"unreadable network file version {quoted(version)}")
    if int(version) > VERSION:
        raise _bad(path, f"network file version {version} is newer than this program")
    shapes: dict[str, tuple[int, ...]] = {}
    spans = []
    for name, entry in header.items():
        ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPE_SIZES
        shape, span = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS and isinstance(span, list)
        ok = ok and all(isinstance(d, int) and d >= 0 for d in shape) and len(span) == 2
        ok = ok and all(isinstance(o, int) for o in span)
        if not ok or span[1] - span[0] != math.prod(shape) * _DTYPE_SIZES[entry["dtype"]]:
            raise _bad(path, f"malformed safetensors entry for tensor {quoted(name)}")
        shapes[name] = tuple(shape)
        spans.append(tuple(span))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise _bad(path, "safetensors tensor data overlaps or has gaps (corrupt file)")
        end = stop
    if end != size - 8 - n:
        raise _bad(path, "safetensors tensor data does not match the file size (truncated or corrupt)")
    return meta, shapes


def _plain(path: Path, value: Any, what: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(path, f"{what} is a {type(value).__name__}, not a JSON object")
    return to_python(value, f"{path}: {what}")


def load_checkpoint(path: str | os.PathLike[str]) -> Network:
    """Read our network file back into modules (eval mode); a bad file raises NetworkFormatError."""
    path = Path(path)
    try:
        return _load_checkpoint(path)
    except CleftGanError:
        raise
    except OSError as e:
        raise _bad(path, f"cannot read the network file: {e.strerror or e}") from e
    except (*MALFORMED_ERRORS, SafetensorError) as e:
        raise _bad(path, f"cannot read the network file: {type(e).__name__}: {one_line(str(e))}") from e


def _load_checkpoint(path: Path) -> Network:
    meta, shapes = _read_header(path)
    if "config" not in meta:
        raise _bad(path, "the network file has no config")
    try:
        config = json.loads(meta["config"])
    except (ValueError, RecursionError) as e:
        raise _bad(path, "the network file's config is not valid JSON") from e
    if not isinstance(config, dict):
        raise _bad(path, "the network file's config is not a JSON object")
    augment_p = config.get("augment_p")
    if augment_p is not None and (isinstance(augment_p, bool) or not isinstance(augment_p, (int, float))):
        raise _bad(path, f"augment_p is {quoted(augment_p)}, not a number")
    net = Network(
        augment_p=augment_p,
        training_set_kwargs=_plain(path, config.get("training_set_kwargs"), "training_set_kwargs"),
        extra=_plain(path, config.get("extra"), "extra") or {},
    )
    architectures = _plain(path, config.get("architectures"), "architectures") or {}
    # Every network is checked against the tensors the header declares, and built, before any
    # tensor data is read.
    modules: dict[str, nn.Module] = {}
    for key in NETWORK_KEYS:
        kwargs = _plain(path, config.get(key), key)
        if kwargs is None:
            continue
        arch = architectures.get(key, "stylegan3") if key in GENERATOR_KEYS else "stylegan3"
        if arch not in GENERATOR_ARCHITECTURES:
            raise _bad(path, f"{key}: unknown generator architecture {quoted(arch)}")
        stored = sum(math.prod(s) for name, s in shapes.items() if name.startswith(key + "."))
        modules[key] = build_network(key, kwargs, stored, f"{path}: {key}", architecture=arch)
    try:
        tensors = load_file(str(path))
    except SafetensorError as e:
        raise _bad(path, f"cannot read the network file: {one_line(str(e))}") from e
    for key, module in modules.items():
        prefix = key + "."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        copy_tensors(module, own, f"{path}: {key}")
        setattr(net, key, module.eval())
    return net

"""Our network file: one safetensors file, tensors plus a JSON header of hyperparameters. Nothing pickled.

Tensors are named `G.<state-dict name>`, `D.<...>`, `G_ema.<...>`; the safetensors metadata holds
`format` (= FORMAT), `version` and `config`: a JSON object with each network's constructor
arguments (null when absent), `augment_p` and `training_set_kwargs`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import NetworkFormatError
from .discriminator import Discriminator
from .generator import Generator
from .official_pickle import copy_tensors, to_python

FORMAT = "cleftgan-hpc-network"
VERSION = 1
NETWORK_KEYS = ("G", "D", "G_ema")


@dataclass
class Network:
    """A loaded network file: our modules (eval mode) plus the training metadata it carries."""

    G: Generator | None = None
    D: Discriminator | None = None
    G_ema: Generator | None = None
    augment_p: float | None = None
    training_set_kwargs: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other JSON metadata (free for callers)

    def generator(self) -> Generator:
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
    metadata = {"format": FORMAT, "version": str(VERSION), "config": json.dumps(to_python(config))}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _read_metadata(path: Path) -> dict[str, str]:
    """The safetensors header's metadata, without loading tensors."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise NetworkFormatError(f"{path}: not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise NetworkFormatError(f"{path}: corrupt safetensors header") from e
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise NetworkFormatError(
            f"{path}: a safetensors file, but not a cleftgan-hpc network file (format {meta.get('format')!r})"
        )
    if int(meta.get("version", "0")) > VERSION:
        raise NetworkFormatError(f"{path}: network file version {meta.get('version')} is newer than this program")
    return meta


def load_checkpoint(path: str | os.PathLike[str]) -> Network:
    """Read our network file back into modules (eval mode)."""
    path = Path(path)
    meta = _read_metadata(path)
    try:
        config = json.loads(meta["config"])
        tensors = load_file(str(path))
    except (KeyError, ValueError, SafetensorError) as e:
        raise NetworkFormatError(f"{path}: cannot read the network file: {e}") from e
    net = Network(
        augment_p=config.get("augment_p"),
        training_set_kwargs=config.get("training_set_kwargs"),
        extra=config.get("extra") or {},
    )
    for key in NETWORK_KEYS:
        kwargs = config.get(key)
        if kwargs is None:
            continue
        cls = Discriminator if key == "D" else Generator
        try:
            module = cls(**kwargs)
        except (TypeError, ValueError, KeyError) as e:
            raise NetworkFormatError(f"{path}: {key}: cannot build from its hyperparameters: {e}") from e
        prefix = key + "."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        copy_tensors(module, own, f"{path}: {key}")
        setattr(net, key, module.eval())
    return net

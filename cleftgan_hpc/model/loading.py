"""load_network: one entry point for official pickles and our own network files."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import NetworkFormatError, UnsafePickleError
from .checkpoint import Network, load_checkpoint
from .official_pickle import read_official_pickle


def load_network(path: str | os.PathLike[str]) -> Network:
    """Load an official StyleGAN3, StyleGAN2 or StyleGAN2-ADA pickle (safely: nothing in it is
    executed) or our network file.

    Returns a Network with .G, .D, .G_ema (our modules, eval mode; None when absent),
    .augment_p and .training_set_kwargs (None when absent).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            f.seek(0)
            # safetensors: an 8-byte header length, then the JSON header; checked first because
            # that length's low byte can be 0x80, the pickle protocol opcode
            is_safetensors = len(head) >= 9 and head[8:9] == b"{"
            if is_safetensors or head[:1] != b"\x80":
                net = None
            else:
                from cleftgan_hpc.model.export import is_exported_pickle, read_exported  # it imports us

                net = read_exported(f) if is_exported_pickle(head) else Network(**read_official_pickle(f))
    except OSError as e:
        raise NetworkFormatError(f"cannot open network file {path}: {e.strerror or e}") from e
    except (UnsafePickleError, NetworkFormatError) as e:  # name the file: the CLI prints only this line
        raise type(e)(f"{path}: {e}") from e
    if net is None:
        if not (len(head) >= 9 and head[8:9] == b"{"):
            raise NetworkFormatError(f"{path}: neither a StyleGAN2/3 pickle nor a cleftgan-hpc network file")
        net = load_checkpoint(path)
    if net.G_ema is not None:
        net.G_ema.requires_grad_(False)  # the EMA copy is never trained directly
    return net

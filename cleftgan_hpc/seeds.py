"""Seeds derived from names and numbers, the same on every run, process and machine.

Every random draw in training, metrics and synthesis takes its seed from the tuple that
identifies it (purpose, run seed, step, rank, sample...), never from a global random state,
so a resumed or split job draws exactly what an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints and names (stable across runs and machines)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def seeded_generator(*parts: int | str) -> torch.Generator:
    """A CPU torch generator seeded by ``derive_seed(*parts)``."""
    import torch

    return torch.Generator().manual_seed(derive_seed(*parts))

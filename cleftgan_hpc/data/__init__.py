"""Data: safe image decoding, FFHQ-style alignment, landmarks, dedupe, the zip dataset and demo faces."""

from typing import Any


def __getattr__(name: str) -> Any:
    # ShardDataset needs torch: import it only when asked for (cleftgan_hpc.data.ShardDataset).
    if name == "ShardDataset":
        from cleftgan_hpc.data.stream import ShardDataset

        return ShardDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

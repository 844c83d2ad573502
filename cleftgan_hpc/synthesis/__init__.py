"""Large-scale synthesis: seeded images from a generator into WebDataset shards in the store.

    layout.py    which seeds go in which shard, which shards in which task; keys; the options digest
    generate.py  seeds -> z and class labels -> batched images on the device (torch)
    encode.py    images -> PNG/JPEG/WebP bytes (runs in worker processes; no torch)
    shards.py    deterministic tar shards (WebDataset: <key>.png + <key>.json) and reading them back
    manifest.py  the manifest (commit marker) and the wids index; opening a dataset by URL
    pipeline.py  device batches -> encoding pool -> tar files -> concurrent uploads, bounded
    build.py     the whole job: claim, resume, produce a task's shards, verify, commit
    pull.py      download (parallel, resumable, verified); regenerate.py: rebuild one image
    stream.py    ShardDataset: stream a dataset from the store (or a pulled copy) into PyTorch
    commands.py  the CLI: synthesize, pull, regenerate
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # ShardDataset needs torch: import it only when asked for (cleftgan_hpc.synthesis.ShardDataset).
    if name == "ShardDataset":
        from cleftgan_hpc.synthesis.stream import ShardDataset

        return ShardDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

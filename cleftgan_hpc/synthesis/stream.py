"""ShardDataset: stream a committed synthetic dataset from S3, a file store or a pulled copy.

    ds = ShardDataset("s3://bucket/datasets/faces", shuffle=1000, decode="tensor")
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=4, collate_fn=collate_samples)
    for epoch in range(n):
        ds.set_epoch(epoch)
        for batch in loader: ...   # batch["image"]: [B, C, H, W] uint8, batch["json"]: provenance dicts

Shards are split between distributed ranks and DataLoader workers (shard i goes to worker
i mod (ranks x workers), after an epoch-seeded shuffle of the shard order that every rank
computes alike), so each sample is read exactly once per epoch when there are at least as
many shards as workers in all. A shard that fails mid-read (a dropped connection) is re-opened
and resumed after the samples already yielded, up to ``retries`` times.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from cleftgan_hpc.errors import DataError, StorageError

Decode = str  # "tensor" | "pil" | "raw"


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """Samples of a cleftgan-hpc dataset as dicts: ``__key__``, ``image`` (decoded), ``json`` (dict)."""

    def __init__(
        self,
        url: str,
        *,
        decode: Decode = "tensor",  # tensor: [C, H, W] uint8; pil: PIL.Image; raw: the encoded bytes
        shuffle: int = 0,  # shuffle buffer size in samples (0: shard order, samples in seed order)
        seed: int = 0,  # of the shard-order and buffer shuffles (with the epoch)
        rank: int | None = None,  # default: torch.distributed, else $RANK, else 0
        world_size: int | None = None,  # default: torch.distributed, else $WORLD_SIZE, else 1
        retries: int = 3,  # re-opens of a shard after a transient error
        endpoint_url: str | None = None,  # S3 endpoint for s3:// URLs
        transform: Callable[[dict[str, Any]], Any] | None = None,  # applied to each sample dict
    ) -> None:
        super().__init__()
        if decode not in ("tensor", "pil", "raw"):
            raise ValueError(f"decode must be 'tensor', 'pil' or 'raw', not {decode!r}")
        from cleftgan_hpc.synthesis.manifest import open_source

        self.url, self.endpoint_url = url, endpoint_url
        self.decode, self.shuffle, self.seed, self.retries, self.transform = decode, shuffle, seed, retries, transform
        default_rank, default_world = _rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world_size - 1}")
        manifest = open_source(url, endpoint_url).manifest()  # refuses an uncommitted dataset now, not in a worker
        self.shards: list[dict[str, Any]] = manifest["shards"]
        self.extension: str = manifest["extension"]
        self.epoch = 0
        self._source = None  # opened lazily in each worker process (clients do not survive fork/pickle)
        self._source_pid = 0

    def __len__(self) -> int:
        """Samples in the whole dataset (all ranks)."""
        return sum(s["samples"] for s in self.shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def my_shards(self, worker: int = 0, workers: int = 1) -> list[dict[str, Any]]:
        """The shards this rank's ``worker`` reads this epoch."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)  # the same on every rank
        total = self.world_size * workers
        return order[self.rank * workers + worker :: total]

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.my_shards(worker, workers)
        samples = (self._decoded(s, shard["name"]) for shard in shards for s in self._read_shard(shard))
        if self.shuffle > 1:
            rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}")
            samples = _buffer_shuffle(samples, self.shuffle, rng)
        for sample in samples:
            yield self.transform(sample) if self.transform is not None else sample

    def _read_shard(self, shard: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from cleftgan_hpc.synthesis.manifest import open_source
        from cleftgan_hpc.synthesis.shards import iter_samples

        done, attempt = 0, 0
        while True:
            try:
                if self._source is None or self._source_pid != os.getpid():  # a forked worker opens its own
                    self._source, self._source_pid = open_source(self.url, self.endpoint_url), os.getpid()
                with self._source.open(shard["name"]) as f:
                    for i, sample in enumerate(iter_samples(f)):
                        if i >= done:  # after a retry, skip what was already yielded
                            done += 1
                            yield sample
                if done != shard["samples"]:
                    raise DataError(f"{shard['name']} holds {done} samples, the manifest says {shard['samples']}")
                return
            except (StorageError, DataError, OSError) as e:
                attempt += 1
                if attempt > self.retries:
                    raise DataError(f"cannot read {shard['name']} of {self.url} ({self.retries} retries): {e}") from e
                self._source = None
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))

    def _decoded(self, sample: dict[str, Any], shard: str) -> dict[str, Any]:
        # A shard written elsewhere (or by hand) may lack a member: say which, not a bare KeyError.
        # Members beyond the image and the json (a .txt, a .cls) are another tool's: ignored.
        key = sample["__key__"]
        where = f"{self.url.rstrip('/')}/{shard}, sample {key!r}"
        found = ", ".join(f".{m}" for m in sorted(sample) if m != "__key__") or "none"
        for member in (self.extension, "json"):
            if member not in sample:
                raise DataError(f"{where}: no {key}.{member} member (the manifest says .{self.extension} images "
                                f"with .json provenance; this sample has {found})")
        data = sample[self.extension]
        try:
            meta = json.loads(sample["json"])
        except ValueError as e:
            raise DataError(f"{where}: {key}.json is not valid JSON: {e}") from None
        out: dict[str, Any] = {"__key__": key, "json": meta}
        if self.decode == "raw":
            out["image"] = data
            return out
        from PIL import Image

        try:
            im = Image.open(io.BytesIO(data))
            im.load()
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for undecodable bytes
            raise DataError(f"{where}: {key}.{self.extension} is not a readable image: {e}") from None
        if self.decode == "pil":
            out["image"] = im
        else:
            import numpy as np

            arr = np.asarray(im)
            arr = arr[:, :, None] if arr.ndim == 2 else arr  # [H, W, C]
            out["image"] = torch.from_numpy(arr.copy()).permute(2, 0, 1)  # [C, H, W] uint8
        return out


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` for ShardDataset samples: images stacked to [B, C, H, W] (tensors of one
    size; PIL images and bytes stay lists), keys and provenance dicts as lists. (torch's default collate
    fails on the provenance's nulls, e.g. ``class`` of an unconditional network.)"""
    images = [s["image"] for s in samples]
    stacked = torch.stack(images) if images and all(isinstance(i, torch.Tensor) for i in images) else images
    return {"__key__": [s["__key__"] for s in samples], "image": stacked, "json": [s["json"] for s in samples]}


def _buffer_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Yield items in a random order using a buffer of ``size``: memory stays at ``size`` items."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf

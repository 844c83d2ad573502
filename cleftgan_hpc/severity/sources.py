"""The image sets the severity index scores, read by index range so that array tasks and resumed
runs read only their part: a dataset zip, a generator with seeds, or a synthesized dataset.

Each source has ``count``, ``resolution``, ``channels``, an ``identity`` (what its images are,
for saved progress), ``keys`` (a name per image for the tables) and ``batches(start, stop, n)``
yielding uint8 [b, C, H, W] tensors of images ``start .. stop - 1`` in order.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cleftgan_hpc.errors import CleftGanError


class ImageSource:
    count: int
    resolution: int
    channels: int
    identity: dict[str, Any]  # what the images are (digests, seeds), JSON-able
    description: str  # how messages name the set
    cacheable_sha256: str | None = None  # a dataset's sha256: real-set scores are cached under it

    def keys(self) -> list[str]:
        raise NotImplementedError

    def batches(self, start: int, stop: int, size: int) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def sample(self, limit: int) -> torch.Tensor:
        """The first ``limit`` images (for checks before any optimisation)."""
        return torch.cat(list(self.batches(0, min(limit, self.count), limit)))


def _nchw(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


class DatasetImages(ImageSource):
    """A dataset zip (the preprocess stage's output); keys are its file names."""

    def __init__(self, path: Path, sha256: str) -> None:
        from cleftgan_hpc.data.dataset import Dataset

        self.dataset = Dataset(path)  # refuses a zip without images
        self.count, self.resolution, self.channels = self.dataset.count, self.dataset.resolution, self.dataset.channels
        self.identity = {"dataset": sha256}
        self.description = f"the dataset's images ({path.name})"
        self.cacheable_sha256 = sha256

    def keys(self) -> list[str]:
        return list(self.dataset.names)

    def batches(self, start: int, stop: int, size: int) -> Iterator[torch.Tensor]:
        for first in range(start, stop, size):
            yield _nchw([self.dataset[i] for i in range(first, min(first + size, stop))])


class NetworkImages(ImageSource):
    """A generator's images for seeds ``first_seed ..``, z drawn as the synthesize stage draws it."""

    def __init__(self, path: Path, sha256: str, first_seed: int, count: int, psi: float, device: str) -> None:
        from cleftgan_hpc.synthesis.generate import load_generator

        self.G = load_generator(path, device)
        if self.G.c_dim != 0:
            raise CleftGanError("severity: the network to score is conditional; score a synthesized dataset of it "
                                "(the synthesize stage draws its labels) instead")
        self.first_seed, self.count, self.psi, self.device = first_seed, count, psi, device
        self.resolution, self.channels = int(self.G.img_resolution), int(self.G.img_channels)
        self.identity = {"network": sha256, "first_seed": first_seed, "truncation_psi": psi}
        self.description = f"the images of {path.name}"

    def keys(self) -> list[str]:
        return [f"seed{s:08d}" for s in range(self.first_seed, self.first_seed + self.count)]

    def batches(self, start: int, stop: int, size: int) -> Iterator[torch.Tensor]:
        from cleftgan_hpc.synthesis.generate import generate_batch

        for first in range(start, stop, size):
            seeds = list(range(self.first_seed + first, self.first_seed + min(first + size, stop)))
            images = generate_batch(self.G, seeds, [None] * len(seeds), self.psi, None, self.device)
            yield _nchw(list(images))


class ShardImages(ImageSource):
    """A committed synthesized dataset: its shards in manifest order; keys are the sample keys."""

    def __init__(self, source: Any, manifest: dict[str, Any]) -> None:
        self.source, self.manifest = source, manifest
        self.shards: list[dict[str, Any]] = manifest["shards"]
        self.extension: str = manifest["extension"]
        self.count = sum(int(s["samples"]) for s in self.shards)
        if self.count == 0:
            raise CleftGanError(f"severity: the synthesized dataset at {source.url} holds no images")
        self.identity = {"synthesized": manifest.get("options_sha256"),
                         "shards": [s.get("sha256") for s in self.shards]}
        self.description = f"the synthesized dataset {manifest.get('name', source.url)}"
        first = next(iter(self._samples(0, 1)))[1]
        self.resolution, self.channels = int(first.shape[0]), int(first.shape[2])
        if first.shape[0] != first.shape[1]:
            h, w = first.shape[:2]
            raise CleftGanError(f"severity: {self.description} has non-square images ({w}x{h})")

    def _samples(self, start: int, stop: int) -> Iterator[tuple[str, np.ndarray]]:
        """(key, uint8 [H, W, C]) of samples ``start .. stop - 1``, reading only the shards they are in."""
        from PIL import Image

        from cleftgan_hpc.synthesis.shards import iter_samples

        offset = 0
        for shard in self.shards:
            n = int(shard["samples"])
            if offset + n > start and offset < stop:
                with self.source.open(shard["name"]) as f:
                    for i, sample in enumerate(iter_samples(f)):
                        if offset + i >= stop:
                            break
                        if offset + i >= start:
                            with Image.open(io.BytesIO(sample[self.extension])) as im:
                                a = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)
                            yield sample["__key__"], (a[..., None] if a.ndim == 2 else a)
            offset += n
            if offset >= stop:
                return

    def keys(self) -> list[str]:
        """The samples' keys, from the seeds each shard lists (no shard is read)."""
        from cleftgan_hpc.synthesis.layout import sample_key

        return [sample_key(s) for sh in self.shards for s in range(int(sh["seeds"][0]), int(sh["seeds"][1]) + 1)]

    def batches(self, start: int, stop: int, size: int) -> Iterator[torch.Tensor]:
        batch: list[np.ndarray] = []
        for _, image in self._samples(start, stop):
            batch.append(image)
            if len(batch) == size:
                yield _nchw(batch)
                batch = []
        if batch:
            yield _nchw(batch)


def open_synthesized(local: Path, store: Any) -> ShardImages:
    """A synthesized dataset from what ``ctx.fetch`` gave for the input: a manifest file (its
    shards are in ``store`` under the manifest's prefix) or a directory with the shards."""
    from cleftgan_hpc.synthesis.manifest import DirSource, StoreSource, check_manifest

    if local.is_dir():
        source = DirSource(local)
        return ShardImages(source, source.manifest())
    try:
        manifest = check_manifest(json.loads(local.read_text()), str(local))
    except (OSError, ValueError) as e:
        raise CleftGanError(f"severity: {local} is not a synthesized dataset's manifest: {e}") from None
    sibling = local.parent
    if all((sibling / s["name"]).is_file() for s in manifest["shards"]):
        return ShardImages(DirSource(sibling), manifest)  # a pulled copy or a directory on disk
    return ShardImages(StoreSource(store, manifest["prefix"]), manifest)

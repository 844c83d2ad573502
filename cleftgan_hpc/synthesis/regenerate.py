"""Rebuild one image from a dataset's manifest and compare it with the stored one.

The image is recomputed in the very batch it was made in (the shard's batch of that seed), since
batched arithmetic may round differently in another batch; the same hardware and software then
give the same bytes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from cleftgan_hpc.synthesis.manifest import DatasetError, DatasetSource


@dataclass
class Regenerated:
    seed: int
    shard: str
    image: bytes
    sha256: str
    stored_sha256: str

    @property
    def matches(self) -> bool:
        return self.sha256 == self.stored_sha256


def regenerate(source: DatasetSource, seed: int, *, network: Path | None = None, device: str = "cpu") -> Regenerated:
    from cleftgan_hpc.storage.base import sha256_file
    from cleftgan_hpc.synthesis.encode import encode_image
    from cleftgan_hpc.synthesis.generate import class_for_seed, generate_batch, image_sha256, load_generator
    from cleftgan_hpc.synthesis.layout import Shard, batches, sample_key
    from cleftgan_hpc.synthesis.shards import iter_samples

    manifest = source.manifest()
    opts = manifest["options"]
    entry = next((s for s in manifest["shards"] if s["seeds"][0] <= seed <= s["seeds"][1]), None)
    if entry is None:
        first, last = manifest["shards"][0]["seeds"][0], manifest["shards"][-1]["seeds"][1]
        raise DatasetError(f"seed {seed} is not in this dataset (seeds {first}-{last})")
    stored = None
    key = sample_key(seed)
    with source.open(entry["name"]) as f:
        for sample in iter_samples(f):
            if sample["__key__"] == key:
                import json

                stored = json.loads(sample["json"])
                break
    if stored is None:
        raise DatasetError(f"{source.uri(entry['name'])} has no sample {key}")

    with tempfile.TemporaryDirectory(prefix="cleftgan-regen-") as tmp:
        if network is None:
            network = Path(tmp) / manifest["network"]["file"]
            source.download(manifest["network"]["file"], network)
        if sha256_file(network) != manifest["network"]["sha256"]:
            raise DatasetError(f"network {network} is not the one the dataset was made with (sha256 differs)")
        g = load_generator(network, device)
        shard = Shard(0, entry["seeds"][0], entry["seeds"][1] - entry["seeds"][0] + 1)
        seeds = next(b for b in batches(shard, opts["batch"]) if seed in b)
        classes = [class_for_seed(s, opts["labels"], g.c_dim) for s in seeds]
        images = generate_batch(g, seeds, classes, opts["truncation_psi"], opts["truncation_cutoff"], device)
    data = encode_image(images[seeds.index(seed)], opts["format"], opts["quality"], opts["resize"])
    return Regenerated(seed, entry["name"], data, image_sha256(data), stored["sha256"])

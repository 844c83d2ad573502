"""Rebuild one image from a dataset's manifest and compare it with the stored one.

The image is recomputed in the very batch it was made in (the shard's batch of that seed), since
batched arithmetic may round differently in another batch; the same hardware and software then
give the same bytes. The network is the dataset's own copy (``network.safetensors`` or
``network.pkl`` beside the manifest; ``pull`` copies it too) unless one is given.

Exit codes of ``cleftgan-hpc regenerate``, as cmp(1)'s: 0 the rebuilt image is byte-identical to
the stored one, 1 it differs, 2 no comparison was made (an error: no network to rebuild with, the
wrong network, a seed the dataset or copy does not hold, an uncommitted dataset...), so that 1
always means "not reproduced".
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleftgan_hpc.errors import ObjectNotFound
from cleftgan_hpc.synthesis.manifest import DatasetError, DatasetSource, DirSource

EXIT_MATCHES, EXIT_DIFFERS, EXIT_ERROR = 0, 1, 2


class NetworkNotFound(DatasetError):
    """The network to rebuild with is neither in the dataset (or copy) nor a readable ``--network`` file."""


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

    @property
    def exit_code(self) -> int:
        return EXIT_MATCHES if self.matches else EXIT_DIFFERS


def _shard_of(manifest: dict[str, Any], seed: int) -> dict[str, Any]:
    """The manifest's entry of the shard holding ``seed``; a DatasetError saying why there is none."""
    entry = next((s for s in manifest["shards"] if s["seeds"][0] <= seed <= s["seeds"][1]), None)
    if entry is not None:
        return entry
    from cleftgan_hpc.synthesis.layout import shard_name

    opts = manifest["options"]
    first, count = opts["first_seed"], opts["count"]  # the original's seeds, also in a partial copy
    subset = manifest.get("subset_of")
    if subset and first <= seed < first + count:
        k = (seed - first) // opts["shard_size"]
        raise DatasetError(
            f"seed {seed} is in {shard_name(k)}, which this partial copy does not hold (it has "
            f"{len(manifest['shards'])} of the {subset['shards']} shards): pull that shard into it (pull "
            f"--shards {k}) or regenerate from the original dataset"
        )
    raise DatasetError(f"seed {seed} is not in this dataset (seeds {first}-{first + count - 1})")


def _network(source: DatasetSource, manifest: dict[str, Any], given: Path | None, tmp: Path) -> Path:
    """The network file to rebuild with: ``given``, else the dataset's copy (read in place in a directory)."""
    if given is not None:
        if not given.is_file():
            raise NetworkNotFound(f"--network {given}: no such file")
        return given
    name = manifest["network"]["file"]
    if isinstance(source, DirSource) and (source.path / name).is_file():
        return source.path / name
    try:
        source.download(name, tmp / name)
    except ObjectNotFound:
        raise NetworkNotFound(
            f"{source.uri(name)} does not exist, so there is no network to rebuild with (a copy pulled by an "
            f"older cleftgan-hpc has none); pass it with --network FILE (the file whose sha256 is "
            f"{manifest['network']['sha256']}, e.g. {name} of the original dataset, or pull the dataset again)"
        ) from None
    return tmp / name


def regenerate(source: DatasetSource, seed: int, *, network: Path | None = None, device: str = "cpu") -> Regenerated:
    """Rebuild ``seed``'s image; NetworkNotFound when there is no network to do it with (see EXIT_ERROR)."""
    from cleftgan_hpc.storage.base import sha256_file
    from cleftgan_hpc.synthesis.encode import encode_image
    from cleftgan_hpc.synthesis.generate import class_for_seed, generate_batch, image_sha256, load_generator
    from cleftgan_hpc.synthesis.layout import Shard, batches, sample_key
    from cleftgan_hpc.synthesis.shards import iter_samples

    manifest = source.manifest()
    opts = manifest["options"]
    entry = _shard_of(manifest, seed)
    stored = None
    key = sample_key(seed)
    with source.open(entry["name"]) as f:
        for sample in iter_samples(f):
            if sample["__key__"] == key:
                stored = json.loads(sample["json"])
                break
    if stored is None:
        raise DatasetError(f"{source.uri(entry['name'])} has no sample {key}")

    with tempfile.TemporaryDirectory(prefix="cleftgan-regen-") as tmp:
        path = _network(source, manifest, network, Path(tmp))
        if sha256_file(path) != manifest["network"]["sha256"]:
            what = f"network {path}" if network is not None else f"the dataset's network copy {source.uri(path.name)}"
            raise DatasetError(f"{what} is not the one the dataset was made with (sha256 differs)")
        g = load_generator(path, device)
        shard = Shard(0, entry["seeds"][0], entry["seeds"][1] - entry["seeds"][0] + 1)
        seeds = next(b for b in batches(shard, opts["batch"]) if seed in b)
        classes = [class_for_seed(s, opts["labels"], g.c_dim) for s in seeds]
        images = generate_batch(g, seeds, classes, opts["truncation_psi"], opts["truncation_cutoff"], device)
    data = encode_image(images[seeds.index(seed)], opts["format"], opts["quality"], opts["resize"])
    return Regenerated(seed, entry["name"], data, image_sha256(data), stored["sha256"])

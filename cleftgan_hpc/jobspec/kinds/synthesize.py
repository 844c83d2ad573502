"""The synthesize stage's config: a large synthetic image dataset, in WebDataset shards, in the store."""

from __future__ import annotations

import math
import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from cleftgan_hpc.jobspec.models import Input, StageBase
from cleftgan_hpc.layout import check_dataset, dataset_prefix

MAX_SEED = 2**32 - 1  # np.random.RandomState takes seeds below 2**32
_SEED_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
DEFAULT_QUALITY = {"jpeg": 95, "webp": 90}


class SynthesizeStage(StageBase):
    """Sample a generator for a range of seeds and write the images as WebDataset tar shards with
    a manifest, under ``datasets/<name>/`` in the store. Every image is a pure function of the
    network, its seed and the options below, so a killed or split run always ends byte-identical."""

    kind: Literal["synthesize"]
    network: Input = Field(
        description="The generator: an official pickle or our .safetensors (a path, store:KEY or stage:NAME, "
        "e.g. the finetune stage's output)."
    )
    count: int | None = Field(
        None, ge=1, le=1_000_000_000, description="Number of images: seeds first_seed .. first_seed + count - 1."
    )
    first_seed: int = Field(0, ge=0, le=MAX_SEED, description="The first seed when count is given.")
    seeds: str | None = Field(
        None,
        description="Instead of count: an inclusive seed range 'A-B'. Contiguous, so that shard k always "
        "holds the same seeds.",
    )
    truncation_psi: float = Field(
        1.0, ge=-2, le=2, description="Truncation psi: 1 samples the full distribution, smaller trades variety for "
        "fidelity (0.7 is common)."
    )
    truncation_cutoff: int | None = Field(
        None, ge=1, le=64, description="Truncate only the first N ws (null: all of them)."
    )
    labels: int | Literal["uniform"] | list[float] | None = Field(
        None,
        description="Class labels for a conditional network: a class index (every image), 'uniform' (a class "
        "drawn per seed), or one weight per class (drawn per seed with those probabilities). Null for an "
        "unconditional network.",
    )
    format: Literal["png", "jpeg", "webp"] = Field("png", description="Image encoding inside the shards.")
    quality: int | None = Field(
        None, ge=1, le=100, description="JPEG/WebP quality (default 95 for JPEG, 90 for WebP); PNG is lossless."
    )
    resize: int | None = Field(
        None, ge=8, le=8192, description="Resize the square images to this many pixels a side (Lanczos); "
        "null keeps the network's resolution."
    )
    shard_size: int = Field(
        1000, ge=1, le=1_000_000, description="Images per shard; the last shard may hold fewer. 1000 makes shards "
        "of about 1.5 GB at 1024x1024 PNG (hundreds of MB at 512 px or as JPEG); up to upload_concurrency + 1 "
        "shards wait on a task's scratch disk."
    )
    dataset: str = Field(
        description="Dataset name (stored under datasets/<name>/) or a store prefix containing '/' "
        "(not under runs/ or cache/, the store's own areas)."
    )
    batch: int = Field(
        32, ge=1, le=4096, description="Images per generator forward pass. Part of the dataset's identity: "
        "batched arithmetic may round differently for another batch size."
    )
    tasks: int = Field(
        1, ge=1, le=100_000, description="Independent tasks the shards are split between (a Slurm array); "
        "1 runs everything in one job."
    )
    workers: int | None = Field(
        None, ge=0, le=256, description="Image-encoding processes; default: the stage's CPUs minus one (0 encodes "
        "in the main process)."
    )
    upload_concurrency: int = Field(
        8, ge=1, le=64, description="Shards uploaded at the same time, each on its own connection (up to this "
        "many + 1 finished shards wait on scratch)."
    )
    overwrite: bool = Field(
        False, description="Replace an existing dataset made with different options (else that is refused)."
    )

    # how fast, not what: the shards' bytes do not depend on them
    reusable_changes: ClassVar[frozenset[str]] = frozenset({"workers", "upload_concurrency"})
    outputs: ClassVar[dict[str, str]] = {"manifest": "manifest.json"}  # a copy of datasets/<name>/manifest.json
    default_output: ClassVar[str] = "manifest"

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return check_dataset(v)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = _SEED_RANGE.match(v)
        if not m:
            raise ValueError(f"bad seed range {v!r}: expected 'A-B', e.g. '0-99999'")
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi < lo:
            raise ValueError(f"bad seed range {v!r}: the end is before the start")
        if hi > MAX_SEED:
            raise ValueError(f"seed {hi} is out of range: seeds are below 2**32")
        return f"{lo}-{hi}"

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: int | str | list[float] | None) -> int | str | list[float] | None:
        if isinstance(v, bool):
            raise ValueError("labels: expected a class index, 'uniform' or a list of weights, not a boolean")
        if isinstance(v, int) and v < 0:
            raise ValueError(f"labels: class index {v} is negative")
        if isinstance(v, list) and (not v or any(not math.isfinite(w) or w < 0 for w in v) or sum(v) <= 0):
            raise ValueError("labels: weights must be non-negative numbers, one per class, not all zero")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> SynthesizeStage:
        if (self.count is None) == (self.seeds is None):
            raise ValueError("give exactly one of count (with first_seed) or seeds ('A-B')")
        if self.seeds is not None and "first_seed" in self.model_fields_set:
            raise ValueError("first_seed goes with count; with seeds the range itself says where to start")
        if self.first_seed + self.image_count - 1 > MAX_SEED:
            raise ValueError(f"the last seed {self.first_seed + self.image_count - 1} is beyond 2**32 - 1")
        if self.quality is not None and self.format == "png":
            raise ValueError("quality is for jpeg and webp; png is lossless (drop quality or change format)")
        if self.truncation_cutoff is not None and self.truncation_psi == 1:
            raise ValueError("truncation_cutoff does nothing with truncation_psi 1; set a psi below 1 or drop it")
        if self.tasks > self.shard_count:
            raise ValueError(
                f"tasks {self.tasks} is more than the {self.shard_count} shards "
                f"({self.image_count} images / shard_size {self.shard_size}); some tasks would have nothing to do"
            )
        return self

    # -- derived values (not fields) ---------------------------------------------------------
    @property
    def seed_start(self) -> int:
        return int(self.seeds.split("-")[0]) if self.seeds is not None else self.first_seed

    @property
    def image_count(self) -> int:
        if self.seeds is not None:
            lo, hi = (int(x) for x in self.seeds.split("-"))
            return hi - lo + 1
        return int(self.count or 0)

    @property
    def shard_count(self) -> int:
        return math.ceil(self.image_count / self.shard_size)

    @property
    def effective_quality(self) -> int | None:
        return self.quality if self.quality is not None else DEFAULT_QUALITY.get(self.format)

    @property
    def prefix(self) -> str:
        return dataset_prefix(self.dataset)

    def array_tasks(self) -> int:
        """Slurm array size for this stage: 0 (one job does everything) when tasks is 1."""
        return self.tasks if self.tasks > 1 else 0

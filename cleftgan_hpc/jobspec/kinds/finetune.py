"""The finetune stage's config: the CleftGAN transfer-learning recipe with ADA."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from cleftgan_hpc.errors import FieldError
from cleftgan_hpc.jobspec.models import Input, StageBase, Strict, _input


def input_or(*words: str) -> object:
    """An Input type that also accepts the given literal words (e.g. 'random')."""

    def validate(value: str, info: ValidationInfo) -> str:
        return value if value in words else _input(value, info)

    validate.reads_input = True  # type: ignore[attr-defined]
    return Annotated[str, AfterValidator(validate)]


NetworkInput = input_or("random")
ExtractorInput = input_or("demo")


# The reference's stylegan2 configuration where it differs from StyleGAN3's defaults: spec
# defaults, so they live with the spec (the recipe's derived values live in training/recipe.py).
STYLEGAN2_MAPPING_LAYERS = 8  # of a random network (StyleGAN3: 2)
STYLEGAN2_GLR = 0.002  # G's default learning rate (StyleGAN3: 0.0025)

ARCHITECTURES = {"stylegan2": "StyleGAN2", "stylegan3-t": "StyleGAN3-T", "stylegan3-r": "StyleGAN3-R"}
_NAMED = re.compile(r"stylegan(2|3-?[tr])(?![a-z0-9])", re.IGNORECASE)


def named_architecture(network: str) -> str | None:
    """The architecture a network file's name states, as the official files are named
    (stylegan2-ffhq-1024x1024.pkl, stylegan3-t-ffhq-1024x1024.pkl, ...); None when it says none
    (a stage's output, store keys with other names, network: random)."""
    if network == "random" or network.startswith("stage:"):
        return None
    m = _NAMED.search(network.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1])
    if m is None:
        return None
    tail = m.group(1).lower().replace("-", "")
    return "stylegan2" if tail == "2" else f"stylegan3-{tail[-1]}"


def check_cfg_fits_network(cfg: str, network: str, *loc: str) -> None:
    """A loaded network keeps its own architecture and cfg picks the recipe for it: a StyleGAN2
    recipe (style mixing, path length) on a StyleGAN3 network, or R's blur on a T network, is no
    experiment the paper (or the reference) runs. Raises FieldError at ``loc`` naming both."""
    named = named_architecture(network)
    if named is None or named == cfg:
        return
    file = network.rstrip("/").rsplit("/", 1)[-1]
    raise FieldError(
        f"cfg {cfg} does not fit network {file}, a {ARCHITECTURES[named]} network by its file name: a loaded "
        f"network keeps its architecture and cfg picks its training recipe; set cfg: {named} (in a grid, link the "
        f"two: {{LABEL: {{network: ..., cfg: ...}}}})",
        *loc,
    )


class RandomNetwork(Strict):
    """A freshly initialised network (``network: random``) of the architecture ``cfg``, for demos
    and tests. The resolution is the dataset's."""

    channel_base: int = Field(2048, ge=64, le=65536, description="Feature map budget: channels = base / resolution.")
    channel_max: int = Field(64, ge=4, le=1024, description="Most channels in any layer.")
    z_dim: int = Field(64, ge=1, le=1024, description="Latent z width.")
    w_dim: int = Field(64, ge=1, le=1024, description="Intermediate latent w width.")
    mapping_layers: int = Field(
        2, ge=1, le=8, description="Mapping network depth (StyleGAN3: 2); with cfg stylegan2 8 unless given."
    )


AugmentOpName = Literal[
    "xflip",
    "rotate90",
    "xint",
    "scale",
    "rotate",
    "aniso",
    "xfrac",
    "brightness",
    "contrast",
    "lumaflip",
    "hue",
    "saturation",
]


class AugmentOp(Strict):
    """One augmentation op with a probability multiplier (the reference's per-op weights)."""

    op: AugmentOpName = Field(description="Op name.")
    weight: float = Field(1.0, ge=0, le=1, description="Multiplies p for this op.")


class FinetuneSettings(Strict):
    """The training recipe: every finetune field except what it reads (a sweep varies these)."""

    random_network: RandomNetwork = Field(default_factory=RandomNetwork, description="Used when network is 'random'.")
    cfg: Literal["stylegan3-t", "stylegan3-r", "stylegan2"] = Field(
        "stylegan3-t",
        description="The recipe, and the architecture for network: random (a loaded network keeps its own). "
        "stylegan2 (the paper's baseline) adds style mixing (0.9) and lazy path-length regularisation.",
    )
    kimg: float = Field(
        460, gt=0, le=1e6, description="Training length in thousands of real images shown (paper: 460)."
    )
    batch: int = Field(32, ge=1, le=4096, description="Global batch size.")
    batch_per_gpu: int | None = Field(
        None, ge=1, le=4096, description="Samples per process per round; smaller values accumulate gradients."
    )
    gamma: float = Field(6.6, ge=0, le=1e4, description="R1 weight (transfer to a small face set used 6.6).")
    glr: float = Field(
        0.0025, gt=0, le=1, description="Generator Adam learning rate (cfg stylegan2: 0.002 unless given)."
    )
    dlr: float = Field(0.002, gt=0, le=1, description="Discriminator Adam learning rate.")
    ema_kimg: float | None = Field(None, ge=0, description="G_ema half-life in kimg; default batch * 10 / 32.")
    ema_rampup: float | None = Field(0.05, ge=0, description="G_ema rampup ratio (null: none).")
    augment: Literal["bgc", "bg", "c", "none"] | list[AugmentOp] = Field(
        "bgc", description="ADA pipeline: a preset name or a list of ops with weights."
    )
    ada_target: float = Field(0.6, gt=0, lt=1, description="Target of r_t = E[sign(D(real))] that ADA steers p toward.")
    ada_interval: int = Field(4, ge=1, le=1000, description="Adjust p every this many batches.")
    ada_kimg: float = Field(
        100, gt=0, description="Images (in kimg) for p to move from 0 to 1 (100 when transferring)."
    )
    augment_p: float | None = Field(None, ge=0, le=1, description="A fixed augmentation probability instead of ADA.")
    freeze_d: int = Field(
        0, ge=0, le=64, description="Freeze the first N discriminator layers (10 or 13 for transfer)."
    )
    max_images: int | None = Field(
        None, ge=1, le=100_000_000,
        description="Train on a seeded subset of this many dataset images (the paper's ablation: 250, 450, all "
        "514); null: all. The same subset on every rank, resume and machine; its list is saved as subset.json.",
    )
    subset_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed that picks the max_images subset.")
    mirror: bool = Field(True, description="Add x-flipped copies of the dataset.")
    conditional: bool = Field(
        False, description="Condition on the dataset's labels (integer classes one-hot, floats as given)."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of everything random; a resumed run repeats it exactly.")
    snapshot_kimg: float = Field(20, gt=0, description="Checkpoint, sample grid and metrics every this many kimg.")
    keep_checkpoints: int = Field(
        3, ge=1, le=1000, description="Keep the newest N checkpoints (and the best by metric)."
    )
    metrics: list[Literal["fid", "kid"]] = Field(
        default_factory=list, description="Metrics at each snapshot against the training set."
    )
    metric_samples: int = Field(1000, ge=16, le=1_000_000, description="Generated images per metric evaluation.")
    grid_seeds: int = Field(16, ge=1, le=256, description="Images in each snapshot's sample grid (fixed seeds).")
    gpus: int = Field(0, ge=0, le=1024, description="GPUs to train on (one process each); 0 trains on the CPU.")
    processes: int | None = Field(
        None, ge=1, le=1024, description="Data-parallel processes; default one per GPU, or 1 on the CPU."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: fp16 on CUDA for the highest resolutions (as num_fp16_res), fp32 on CPU."
    )

    @property
    def world_size(self) -> int:
        return self.processes or max(self.gpus, 1)

    @model_validator(mode="after")
    def _stylegan2_defaults(self) -> FinetuneSettings:
        # the reference's StyleGAN2 defaults (mapping depth 8, G lr 0.002), written into the
        # settings so that the digests (the plan's, a checkpoint's) name what trains; given values stay
        if self.cfg == "stylegan2":
            if "mapping_layers" not in self.random_network.model_fields_set:
                self.random_network.mapping_layers = STYLEGAN2_MAPPING_LAYERS
            if "glr" not in self.model_fields_set:
                self.glr = STYLEGAN2_GLR
        return self

    @model_validator(mode="after")
    def _batches(self) -> FinetuneSettings:
        procs = self.world_size
        if self.batch % procs:
            raise ValueError(f"batch {self.batch} is not divisible by the {procs} processes")
        per = self.batch_per_gpu or self.batch // procs
        if (self.batch // procs) % per:
            raise ValueError(f"batch per process {self.batch // procs} is not divisible by batch_per_gpu {per}")
        return self


class FinetuneStage(StageBase, FinetuneSettings):
    """Adapt a pretrained StyleGAN3 (or StyleGAN2) network to a small dataset with adaptive discriminator
    augmentation (the CleftGAN recipe), checkpointing everything so it resumes exactly."""

    kind: Literal["finetune"]
    network: NetworkInput = Field(
        description="The starting network: an official pickle or our .safetensors (a path, store:KEY or "
        "stage:NAME), or 'random' for a fresh network built from random_network."
    )
    dataset: Input = Field(description="The training dataset zip (e.g. stage:dataset).")
    feature_extractor: ExtractorInput | None = Field(
        None,
        description="Feature extractor TorchScript file for metrics (the Inception file); 'demo' uses our small one.",
    )

    # the run's length, its snapshots, the learning-rate/ADA knobs (PBT changes those between a
    # checkpoint and its clone) and the hardware (the global batch and every sample's randomness
    # do not depend on how it is split, so only rounding differs; with cfg stylegan2 the style
    # mixing cutoff and the path-length samples are per round, so the split picks them): a
    # checkpoint written under other values is resumed all the same
    reusable_changes: ClassVar[frozenset[str]] = frozenset({
        "kimg", "snapshot_kimg", "keep_checkpoints", "metrics", "metric_samples", "grid_seeds", "glr", "dlr",
        "ada_target", "ada_kimg", "ada_interval", "augment_p", "gamma", "gpus", "processes", "batch_per_gpu",
        "precision",
    })
    outputs: ClassVar[dict[str, str]] = {
        "network": "network.safetensors",
        "checkpoints": "checkpoints",
        "stats": "stats.jsonl",
        "curves": "curves.png",
    }
    default_output: ClassVar[str] = "network"
    task_per_gpu: ClassVar[bool] = True  # Slurm: one task per GPU, each a data-parallel rank

    # the settings' answers, not StageBase's one-process defaults (StageBase comes first in the bases)
    world_size = FinetuneSettings.world_size

    @property
    def data_parallel_gpus(self) -> int:
        return self.gpus

    @model_validator(mode="after")
    def _cfg_fits_network(self) -> FinetuneStage:
        check_cfg_fits_network(self.cfg, self.network, "cfg" if "cfg" in self.model_fields_set else "network")
        return self

    @model_validator(mode="after")
    def _metrics_need_extractor(self) -> FinetuneStage:
        if self.metrics and self.feature_extractor is None:
            raise FieldError("metrics need feature_extractor: the Inception TorchScript file, or 'demo'", "metrics")
        return self

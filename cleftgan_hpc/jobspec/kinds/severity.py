"""The severity stage's config, and the severity index's options (shared with evaluate's DISH).

The severity index (Hayajneh et al., PLOS ONE 2023, e0288228) scores a face by normalising it
with a generator of normal faces and measuring what the normalisation changed. The paper names
the steps but not their settings; every setting below is ours, with the reason in its
description and in docs/evaluation.md.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from cleftgan_hpc.jobspec.kinds.finetune import input_or
from cleftgan_hpc.jobspec.kinds.synthesize import MAX_SEED
from cleftgan_hpc.jobspec.models import Input, StageBase, Strict

LpipsInput = input_or("demo")


class ProjectionOptions(Strict):
    """GAN inversion: each image's latent in W+ (one w per synthesis layer), found by gradient
    descent from the mean w. The schedule is the StyleGAN2-ADA projector's; W+ and the step count
    are ours."""

    steps: int = Field(
        300, ge=1, le=100_000, description="Optimisation steps. Chosen for cost (the reference's W projector uses "
        "1000); check the recorded projection_loss has flattened on your images and raise it if not."
    )
    lr: float = Field(0.1, gt=0, le=10, description="Peak Adam learning rate of the latents (the reference's).")
    rampup: float = Field(
        0.05, ge=0, le=1, description="Fraction of the steps over which the learning rate rises linearly from 0."
    )
    rampdown: float = Field(
        0.25, ge=0, le=1, description="Fraction of the steps at the end over which it falls to 0 (half a cosine)."
    )
    noise: float = Field(
        0.05, ge=0, le=10, description="Gaussian noise added to the latents, times the spread of w, at the start "
        "(it escapes poor local optima); it falls quadratically to 0 at `noise_ramp` of the steps."
    )
    noise_ramp: float = Field(0.75, gt=0, le=1, description="Fraction of the steps after which no noise is added.")
    lpips_weight: float = Field(
        1.0, ge=0, le=1000, description="Weight of the perceptual (LPIPS) distance (with an LPIPS network)."
    )
    pixel_weight: float | None = Field(
        None, ge=0, le=1000, description="Weight of the mean squared pixel error (images in [-1, 1]). Default: 0 "
        "with an LPIPS network (as the reference projector: pixel losses pull towards blurry averages), 1 without."
    )
    w_plus_reg: float = Field(
        0.0, ge=0, le=1000, description="Pull of each layer's w towards the image's mean w (in units of w's spread "
        "squared); 0: plain W+, as the issue specifies. Raise it if W+ reproduces the anomaly itself."
    )
    perceptual_size: int = Field(
        256, ge=16, le=4096, description="Images larger than this are box-downsampled to it for the perceptual "
        "loss (as the reference projector and PPL do)."
    )
    w_avg_samples: int = Field(
        10_000, ge=2, le=1_000_000, description="Latents mapped to find the mean w (the start) and w's spread."
    )


class AdaptationOptions(Strict):
    """Model adaptation: a few steps tuning a copy of the synthesis network's weights to one image
    at its projected latent (the paper's step; the settings are ours). Three things keep it from
    learning the anomaly it should expose: few steps at a small learning rate; a pull back towards
    the original weights after every step; and a loss that ignores the pixels the projection
    reproduced worst (where an anomaly shows)."""

    steps: int = Field(
        30, ge=0, le=10_000, description="Tuning steps per image; 0 turns adaptation off (the projection alone)."
    )
    lr: float = Field(
        3e-4, gt=0, le=1, description="Adam learning rate of the weights (pivotal tuning's, which uses hundreds "
        "of steps to fit an image fully; a tenth of them here)."
    )
    pull: float = Field(
        0.05, ge=0, le=1, description="After every step each weight moves this fraction of the way back to its "
        "original value (weight decay towards the original, not towards 0): a weight settles within about "
        "lr * (1 - pull) / pull (0.0057 with the defaults, two thirds of what 30 free steps could reach) of where "
        "it started. 0: no pull."
    )
    ignore_fraction: float = Field(
        0.05, ge=0, lt=1, description="The fraction of pixels with the largest (blurred) projection error that the "
        "tuning loss ignores: where an anomaly shows, the weights get no signal to reproduce it. 0: none ignored."
    )
    lpips_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the LPIPS distance (with an LPIPS network).")
    pixel_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the mean squared pixel error.")


class SeverityIndexOptions(Strict):
    """How the severity index turns an image and its normalised version into a heat map and a score."""

    batch: int = Field(
        8, ge=1, le=1024, description="Images projected together (adaptation tunes one image at a time). Part of "
        "the scores' identity: another batch may round differently."
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the mean-w latents and the projection noise.")
    projection: ProjectionOptions = Field(default_factory=ProjectionOptions, description="GAN inversion into W+.")
    adaptation: AdaptationOptions = Field(default_factory=AdaptationOptions, description="Model adaptation.")
    colour: Literal["ycbcr", "rgb"] = Field(
        "ycbcr", description="Colour space of the difference: ycbcr (ITU-R BT.601 full range, as JPEG) separates "
        "brightness from chroma; rgb compares the channels as they are."
    )
    channel_weights: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0), description="Weights of the three channels' absolute differences (Y, Cb, Cr or R, G, B); "
        "equal by default: the paper gives none."
    )
    erosion_radius: int | None = Field(
        None, ge=0, le=64, description="Grey-level erosion (minimum over a (2r+1)^2 square) of the difference map, "
        "removing differences thinner than 2r+1 pixels (edges the generator misplaces by a pixel or two). "
        "Default: resolution // 256 (4 at 1024, 1 at 256, none below 256)."
    )
    reduce: Literal["top_mean", "mean"] = Field(
        "top_mean", description="The score from the heat map: top_mean, the mean of its largest `top_fraction` "
        "of pixels (a local anomaly is not diluted by the rest of the face); mean, the mean of all pixels."
    )
    top_fraction: float = Field(
        0.01, gt=0, le=1, description="For top_mean: the fraction of pixels averaged (1% of the image)."
    )
    region: tuple[float, float, float, float] | None = Field(
        None, description="[left, top, right, bottom] as fractions of the image: score only this box (e.g. the "
        "mouth of aligned faces). Default: the whole image."
    )

    @model_validator(mode="after")
    def _checks(self) -> SeverityIndexOptions:
        if any(not math.isfinite(w) or w < 0 for w in self.channel_weights) or sum(self.channel_weights) <= 0:
            raise ValueError("channel_weights must be three non-negative numbers, not all zero")
        if self.region is not None:
            x0, y0, x1, y1 = self.region
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"region must be [left, top, right, bottom] fractions with left < right and "
                                 f"top < bottom, got {list(self.region)}")
        return self


class SeverityStage(StageBase):
    """Score images with the severity index: each is normalised by a generator of normal faces (GAN
    inversion into W+, then model adaptation), and the difference between the image and its
    normalised version (colour transform, erosion) is its heat map and score. A research measure
    of how far a face is from the normal faces the generator learned, not a clinical one.
    Images come from a dataset zip, a network and seeds, or a synthesized dataset. Split into
    array tasks on Slurm; preempted, it resumes without scoring an image twice."""

    kind: Literal["severity"]
    normal_network: Input = Field(
        description="The generator of normal faces (e.g. the FFHQ StyleGAN3 pickle the fine-tune starts from); any "
        "StyleGAN2/3 network file the loader reads. Its resolution and channels must be the images'."
    )
    dataset: Input | None = Field(None, description="Score a dataset zip (e.g. stage:dataset).")
    network: Input | None = Field(
        None, description="Or score a generator's images: seeds first_seed .. first_seed + count - 1, as the "
        "synthesize stage draws them."
    )
    count: int | None = Field(None, ge=1, le=10_000_000, description="With network: how many images.")
    first_seed: int = Field(0, ge=0, le=MAX_SEED, description="With network: the first seed.")
    truncation_psi: float = Field(1.0, ge=-2, le=2, description="With network: truncation psi.")
    synthesized: Input | None = Field(
        None, description="Or score a synthesized dataset: a synthesize stage (stage:NAME, its manifest), or a "
        "dataset directory holding manifest.json and the shards."
    )
    lpips: LpipsInput | None = Field(
        None, description="The LPIPS VGG16 TorchScript file (vgg16.pt) for the perceptual losses; 'demo': our "
        "small stand-in; none: pixel losses only."
    )
    index: SeverityIndexOptions = Field(default_factory=SeverityIndexOptions, description="The index's options.")
    tasks: int = Field(
        1, ge=1, le=100_000, description="Independent tasks the images are split between (a Slurm array); 1 runs "
        "everything in one job."
    )
    overlays: int = Field(
        8, ge=0, le=1000, description="Heat-map overlays drawn for a sample of images (evenly spaced indices)."
    )
    extremes: int = Field(
        4, ge=0, le=1000, description="Heat-map overlays drawn for the highest and for the lowest scores."
    )
    save_every_s: float = Field(
        120, gt=0, description="Seconds between saves of the scores a preempted task resumes from."
    )
    ratings: Input | None = Field(
        None, description="A CSV of ratings to check the index against (human ratings, as the paper's 125 faces; "
        "the demo's drawn severities): a `file` column naming each image and a `rating_column` of numbers. Adds "
        "agreement.json (Pearson and Spearman correlations) and agreement.png. Images are named as scores.csv "
        "names them, or by the photos' own names with `photo_names`."
    )
    rating_column: str = Field("severity", min_length=1, max_length=200, description="The ratings' column.")
    photo_names: Input | None = Field(
        None, description="With ratings of a dataset: the preprocess stage's report (stage:NAME.report), which "
        "maps the photos' names (the ones the ratings use) to the dataset's image names."
    )

    # any: each task's saved scores carry a digest of the images, the range and the scorer, checked on resume
    reusable_changes: ClassVar[frozenset[str]] = frozenset({
        "normal_network", "dataset", "network", "count", "first_seed", "truncation_psi", "synthesized", "lpips",
        "index", "tasks", "overlays", "extremes", "save_every_s", "ratings", "rating_column", "photo_names",
    })
    outputs: ClassVar[dict[str, str]] = {
        "scores": "scores.csv",  # one row per image: index, key, score, losses, heat-map peak
        "table": "scores.npz",  # the same columns as arrays (scores.parquet beside it when pyarrow is installed)
        "heatmaps": "heatmaps",  # overlay PNGs: sample-*, highest-*, lowest-*
        "summary": "summary.png",  # score histogram, projection loss vs score, a heat-map grid
        "record": "severity.json",  # what was scored with what: sources, digests, options, statistics
    }
    default_output: ClassVar[str] = "scores"

    @model_validator(mode="after")
    def _one_source(self) -> SeverityStage:
        given = [name for name in ("dataset", "network", "synthesized") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one image source: dataset, network (with count) or synthesized; got "
                             f"{', '.join(given) if given else 'none'}")
        if self.network is not None and self.count is None:
            raise ValueError("network needs count: how many seeds (first_seed ..) to score")
        # by value, not by which fields were written: a run's stored spec writes every field out
        if self.network is None and (self.count is not None or self.first_seed != 0 or self.truncation_psi != 1.0):
            raise ValueError("count, first_seed and truncation_psi go with network; drop them or score a network")
        if self.count is not None and self.first_seed + self.count - 1 > MAX_SEED:
            raise ValueError(f"the last seed {self.first_seed + self.count - 1} is beyond 2**32 - 1")
        if self.photo_names is not None and (self.ratings is None or self.dataset is None):
            raise ValueError("photo_names maps a dataset's photos to its images for ratings: it needs ratings and "
                             "dataset")
        if self.count is not None and self.tasks > self.count:
            raise ValueError(f"tasks {self.tasks} is more than the {self.count} images: some tasks would have nothing")
        return self

    def array_tasks(self) -> int:
        """Slurm array size: 0 (one job scores everything) when tasks is 1."""
        return self.tasks if self.tasks > 1 else 0

"""The evaluate stage's config: FID, KID, PPL and DISH of a generator against the real dataset."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from cleftgan_hpc.errors import FieldError
from cleftgan_hpc.jobspec.kinds.finetune import ExtractorInput, input_or
from cleftgan_hpc.jobspec.kinds.severity import SeverityIndexOptions
from cleftgan_hpc.jobspec.kinds.synthesize import MAX_SEED
from cleftgan_hpc.jobspec.models import Input, StageBase, Strict

LpipsInput = input_or("demo")
SeverityInput = input_or("demo")

Metric = Literal["fid", "kid", "ppl", "dish"]


class PPLOptions(Strict):
    """Perceptual path length, StyleGAN3's convention (the defaults are its ``ppl2_wend``)."""

    samples: int = Field(50_000, ge=2, le=10_000_000, description="Latent pairs measured.")
    epsilon: float = Field(1e-4, gt=0, le=0.1, description="Step along the path between the two images of a pair.")
    space: Literal["w", "z"] = Field("w", description="Interpolate in W (lerp) or in Z (slerp).")
    sampling: Literal["end", "full"] = Field(
        "end", description="'end': at the path's start (t = 0); 'full': anywhere along it (t ~ U(0, 1))."
    )
    crop: bool = Field(False, description="Measure only the face centre (rows 3/8..7/8, columns 2/8..6/8).")


class DISHOptions(Strict):
    """DISH: the divergence between histograms of severity scores of real and generated images.
    The paper does not publish its binning or divergence; these defaults are ours."""

    bins: int = Field(20, ge=2, le=10_000, description="Histogram bins.")
    range: tuple[float, float] | None = Field(
        None,
        description="[low, high] of the bins; default the real scores' min..max. Scores outside land in the end bins.",
    )
    divergence: Literal["js", "kl", "hellinger", "tv"] = Field(
        "js",
        description="js: Jensen-Shannon in bits (0..1, symmetric, finite with empty bins); kl: KL(real || "
        "generated) with smoothing; hellinger: Hellinger distance (0..1); tv: total variation (0..1).",
    )
    smoothing: float = Field(1e-6, ge=0, le=1, description="Added to every bin before kl (keeps it finite).")
    images: int | None = Field(
        None, ge=2, le=500_000, description="Generated images scored (the first of num_images). Default: all "
        "num_images with a severity_model; 1000 with the severity index (normal_network), whose every score "
        "costs hundreds of generator passes."
    )

    @model_validator(mode="after")
    def _range_ordered(self) -> DISHOptions:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(self.range)}")
        return self


DEFAULT_INDEX_IMAGES = 1000  # generated images the severity index scores for DISH unless dish.images says


class EvaluateStage(StageBase):
    """Measure a generator the way CleftGAN is judged: FID and KID (Inception features), PPL (LPIPS
    path length) and DISH (cleft-severity histograms), against the real dataset. Image i is seed
    ``first_seed + i`` with z drawn as the synthesize stage draws it, so an unconditional network's
    evaluated images are a synthesize stage's images at the same truncation (bit for bit at the
    same batch size). Preempted, it resumes from its last saved progress."""

    kind: Literal["evaluate"]
    network: Input = Field(description="The generator: an official pickle or our .safetensors (e.g. stage:train).")
    dataset: Input = Field(description="The real dataset zip the generator is compared with (e.g. stage:dataset).")
    metrics: list[Metric] = Field(min_length=1, description="Metrics to compute: any of fid, kid, ppl, dish.")
    num_images: int = Field(
        50_000, ge=2, le=500_000, description="Generated images for FID, KID and DISH (50,000 is the standard; "
        "their Inception features are held in memory, 8 KB an image)."
    )
    first_seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the first generated image.")
    truncation_psi: float = Field(
        1.0, ge=-2, le=2, description="Truncation of the generated images (FID is usually reported at 1)."
    )
    feature_extractor: ExtractorInput | None = Field(
        None, description="For fid/kid: the Inception TorchScript file (inception-2015-12-05.pt); 'demo' uses our "
        "small stand-in."
    )
    lpips: LpipsInput | None = Field(
        None, description="For ppl: the LPIPS VGG16 TorchScript file (vgg16.pt); 'demo' uses our small stand-in."
    )
    severity_model: SeverityInput | None = Field(
        None, description="For dish: a TorchScript cleft-severity scorer, uint8 images [N, 3, H, W] -> scores [N]; "
        "'demo' uses our toy scorer for the demo faces (not a clinical model)."
    )
    normal_network: Input | None = Field(
        None, description="For dish, instead of severity_model: a generator of normal faces (e.g. the FFHQ network "
        "the fine-tune starts from); DISH then scores faces with the severity index (see the severity stage), using "
        "`lpips` for its perceptual losses when given. The real set's scores are cached in the store."
    )
    severity_index: SeverityIndexOptions = Field(
        default_factory=SeverityIndexOptions, description="The severity index's options (with normal_network)."
    )
    ppl: PPLOptions = Field(default_factory=PPLOptions, description="PPL options.")
    dish: DISHOptions = Field(default_factory=DISHOptions, description="DISH options.")
    kid_subsets: int = Field(100, ge=1, le=10_000, description="KID: random subsets averaged.")
    kid_subset_size: int = Field(1000, ge=2, le=100_000, description="KID: images per subset (at most).")
    batch: int = Field(32, ge=1, le=4096, description="Images per forward pass.")
    seed: int = Field(0, ge=0, description="Seed of the PPL latents and KID subsets.")
    save_every_s: float = Field(
        300, gt=0, description="Seconds between saves of the progress a preempted run resumes from."
    )

    # any: each saved series carries a digest of what its rows depend on, checked on resume
    reusable_changes: ClassVar[frozenset[str]] = frozenset({
        "network", "dataset", "metrics", "num_images", "first_seed", "truncation_psi", "feature_extractor", "lpips",
        "severity_model", "ppl", "dish", "kid_subsets", "kid_subset_size", "batch", "seed", "save_every_s",
        "normal_network", "severity_index",
    })
    outputs: ClassVar[dict[str, str]] = {"metrics": "metrics.json", "report": "report.png"}
    default_output: ClassVar[str] = "metrics"

    @model_validator(mode="after")
    def _models_for_metrics(self) -> EvaluateStage:
        needs = {"fid": "feature_extractor", "kid": "feature_extractor", "ppl": "lpips", "dish": "severity_model"}
        for i, metric in enumerate(self.metrics):
            if metric == "dish" and self.normal_network is not None:
                continue  # the severity index scores the faces
            if getattr(self, needs[metric]) is None:
                also = " or normal_network (a normal-face generator: the severity index)" if metric == "dish" else ""
                raise FieldError(
                    f"metric {metric!r} needs {needs[metric]} (a TorchScript file, or 'demo'){also}", "metrics", i
                )
        if self.severity_model is not None and self.normal_network is not None:
            raise FieldError("give severity_model or normal_network for dish, not both", "normal_network")
        if len(set(self.metrics)) != len(self.metrics):
            raise FieldError(f"metrics lists a metric twice: {self.metrics}", "metrics")
        if self.dish.images is not None and self.dish.images > self.num_images:
            raise FieldError(f"dish.images {self.dish.images} is more than num_images {self.num_images}", "dish",
                             "images")
        return self

    @property
    def dish_images(self) -> int:
        """Generated images scored for DISH."""
        if self.dish.images is not None:
            return self.dish.images
        return min(self.num_images, DEFAULT_INDEX_IMAGES) if self.normal_network is not None else self.num_images

"""The sweep stage's config: Ray Tune over fine-tune settings (ADA target, learning rates, gamma)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from cleftgan_hpc.jobspec.kinds.finetune import ExtractorInput, FinetuneSettings, NetworkInput, check_cfg_fits_network
from cleftgan_hpc.jobspec.models import Input, StageBase, Strict

Scalar = float | int | str | bool


class Domain(Strict):
    """Where one setting is searched: exactly one of grid, choice, uniform, loguniform."""

    grid: list[Scalar] | None = Field(None, description="Every value, each in its own trials (a grid search).")
    choice: list[Scalar] | None = Field(None, description="Values sampled uniformly.")
    uniform: tuple[float, float] | None = Field(None, description="[low, high] sampled uniformly.")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high] sampled log-uniformly (> 0).")

    @model_validator(mode="after")
    def _one(self) -> Domain:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform (got {given or 'none'})")
        for k in ("uniform", "loguniform"):
            bounds = getattr(self, k)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{k} needs low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be > 0")
        if self.grid is not None and not self.grid or self.choice is not None and not self.choice:
            raise ValueError("grid and choice need at least one value")
        return self


class TrialResources(Strict):
    """What one trial gets from Ray."""

    cpus: float = Field(1, gt=0, le=1024, description="CPU cores per trial.")
    gpus: float = Field(0, ge=0, le=64, description="GPUs per trial (fractions share a GPU).")


UNSEARCHABLE = {
    "random_network": "search scalar settings such as ada_target",
    "metrics": "the sweep's metric decides",
    "augment": "search augment_p or ada_target instead",
    "kimg": "kimg_per_trial sets every trial's length",
    "seed": "the sweep's seed numbers the trials",
    "metric_samples": "trials would not be comparable",
    "grid_seeds": "it changes nothing learnt",
    "snapshot_kimg": "trials report at the same kimg",
    "keep_checkpoints": "it changes nothing learnt",
    "gpus": "trial_resources sets it",
    "processes": "a trial is one process",
    "max_images": "trials on different subsets are not comparable; put the sweep in a grid instead",
    "subset_seed": "trials on different subsets are not comparable",
    "cfg": "it is the network's architecture, not a setting to tune; compare architectures with a grid "
           "(an axis linking each network to its cfg)",
}


class SweepStage(StageBase):
    """Tune the fine-tune on a small dataset with Ray Tune: each trial is the finetune stage
    itself, reporting its metric and checkpoint at every snapshot; the best trial's network
    becomes this stage's output."""

    kind: Literal["sweep"]
    network: NetworkInput = Field(description="The starting network of every trial (as finetune's network).")
    dataset: Input = Field(description="The training dataset zip (as finetune's dataset).")
    feature_extractor: ExtractorInput = Field(
        description="Feature extractor file for the metric (the Inception TorchScript file); 'demo' for ours."
    )
    base: FinetuneSettings = Field(
        default_factory=FinetuneSettings, description="The fine-tune settings every trial starts from."
    )
    space: dict[str, Domain] = Field(description="Fine-tune settings to vary, each with its domain.")
    num_samples: int = Field(4, ge=1, le=10000, description="Trials (times each grid combination).")
    metric: Literal["kid", "fid"] = Field("kid", description="What trials are compared by (lower is better).")
    scheduler: Literal["asha", "pbt", "fifo"] = Field(
        "asha", description="asha stops poor trials early; pbt clones good trials and mutates; fifo runs all."
    )
    grace_period_kimg: float = Field(1, gt=0, description="ASHA: kimg every trial trains before it can be stopped.")
    reduction_factor: float = Field(2, gt=1, le=16, description="ASHA: keep 1/reduction_factor at each rung.")
    perturbation_kimg: float = Field(1, gt=0, description="PBT: kimg between exploit/explore steps.")
    search: Literal["random", "optuna"] = Field("random", description="Sampler: random (and grids), or Optuna TPE.")
    max_concurrent: int = Field(0, ge=0, le=1024, description="Trials at once; 0 lets the resources decide.")
    trial_resources: TrialResources = Field(default_factory=TrialResources, description="Resources of each trial.")
    kimg_per_trial: float = Field(4, gt=0, le=1e5, description="Training length of a trial that is not stopped.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the search (trial t trains with seed + t).")

    outputs: ClassVar[dict[str, str]] = {
        "network": "network.safetensors",
        "results_csv": "results.csv",
        "results_json": "results.json",
        "plot": "metric_vs_kimg.png",
    }
    default_output: ClassVar[str] = "network"
    ray_cluster: ClassVar[bool] = True  # Slurm: the job starts a Ray cluster across its nodes

    @field_validator("space")
    @classmethod
    def _known_fields(cls, v: dict[str, Domain]) -> dict[str, Domain]:
        import difflib

        known = set(FinetuneSettings.model_fields)
        for name in v:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"space: {name!r} is not a fine-tune setting{hint}")
            if name in UNSEARCHABLE:
                raise ValueError(f"space: {name!r} cannot be searched ({UNSEARCHABLE[name]})")
        if not v:
            raise ValueError("space is empty: name at least one setting to vary, e.g. ada_target")
        return v

    @model_validator(mode="after")
    def _values_fit_the_settings(self) -> SweepStage:
        base = self.base.model_dump()
        for name, d in self.space.items():
            if (d.uniform or d.loguniform) is not None and FinetuneSettings.model_fields[name].annotation not in (
                float, float | None, "float", "float | None"
            ):
                raise ValueError(f"space.{name}: uniform/loguniform draw floats; use choice or grid for this setting")
            values = d.grid or d.choice or list(d.uniform or d.loguniform or ())
            for value in values:
                try:
                    FinetuneSettings.model_validate({**base, name: value})
                except ValidationError as exc:
                    why = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"space.{name}: {value!r} does not fit: {why}") from None
        if self.search == "optuna" and any(d.grid is not None for d in self.space.values()):
            raise ValueError("search: optuna samples values; use choice/uniform/loguniform rather than grid")
        return self

    @model_validator(mode="after")
    def _schedule(self) -> SweepStage:
        if self.scheduler == "pbt" and any(d.grid is not None for d in self.space.values()):
            raise ValueError("pbt mutates settings; use choice/uniform/loguniform rather than grid")
        if self.scheduler == "asha" and self.grace_period_kimg > self.kimg_per_trial:
            raise ValueError("grace_period_kimg is longer than kimg_per_trial: nothing could be stopped early")
        if "snapshot_kimg" in self.base.model_fields_set and self.base.snapshot_kimg > self.kimg_per_trial:
            raise ValueError("base.snapshot_kimg exceeds kimg_per_trial: trials would report no metric")
        where = ("base", "cfg") if "cfg" in self.base.model_fields_set else ("network",)
        check_cfg_fits_network(self.base.cfg, self.network, *where)
        return self

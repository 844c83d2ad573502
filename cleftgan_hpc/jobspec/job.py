"""JobSpec: the whole job, as written in one YAML file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from cleftgan_hpc.errors import FieldError
from cleftgan_hpc.jobspec.models import NAME_RE, Resources, SlurmConfig, StoreConfig, Strict
from cleftgan_hpc.jobspec.stages import AnyStage

Backend = Literal["local", "slurm"]


class JobSpec(Strict):
    """A job: named stages run in dependency order on a backend, writing to a store."""

    name: str = Field(description="Job name; run ids start with it. Letters, digits, '-' and '_'.")
    store: StoreConfig = Field(
        "file://./store",  # type: ignore[assignment]
        validate_default=True,  # so the default resolves against the spec's directory too
        description="Where everything the job makes goes: a URL, or a mapping with url, endpoint_url, region, profile.",
    )
    backend: Backend = Field(
        "local",
        description="Where stages run. 'local': one process per stage on this machine; "
        "'slurm': one Slurm job per stage (arrays for synthesis), submitted through submitit.",
    )
    resources: Resources = Field(default_factory=Resources, description="Default resources of every stage.")
    slurm: SlurmConfig = Field(
        {},  # type: ignore[assignment]
        validate_default=True,  # so log_dir resolves against the spec's directory
        description="Slurm settings: container, setup lines, array parallelism, default partition/account/qos.",
    )
    stages: dict[str, AnyStage] = Field(description="Named stages, in any order; 'needs' and stage: inputs order them.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"bad name {v!r}: start with a letter; letters, digits, '-' and '_' only, at most 63")
        return v

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: dict[str, AnyStage]) -> dict[str, AnyStage]:
        if not v:
            raise ValueError("a job needs at least one stage")
        return v

    @model_validator(mode="after")
    def _gpus_agree(self) -> JobSpec:
        for name, stage in self.stages.items():
            gpus = stage.data_parallel_gpus
            if not gpus:
                continue
            r = self.resources_of(name)
            if r.gpus * r.nodes != gpus:
                raise FieldError(
                    f"trains on gpus: {gpus} but its resources give {r.gpus} GPU(s) x {r.nodes} node(s); "
                    "set resources.gpus (per node) so that they agree",
                    "stages", name, "gpus",
                )
        return self

    def resources_of(self, stage: str) -> Resources:
        """The job's resources with the fields the stage sets itself replaced (field by field,
        so a stage asking for gpus keeps the job's partition and time)."""
        own = self.stages[stage].resources
        if own is None:
            return self.resources
        return self.resources.model_copy(update=own.model_dump(exclude_unset=True))

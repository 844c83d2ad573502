"""The typed job spec: store, backend, resources and named stages (pydantic v2 models).

Every field documents itself (``description``) so that ``cleftgan-hpc schema`` and the
README's reference are generated from, and agree with, the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


def resolve_path(value: str | Path, info: ValidationInfo | None) -> Path:
    """Expand ~ and make a relative path absolute against the spec's directory
    (``base_dir`` in the validation context; the working directory without one)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    base = (info.context or {}).get("base_dir") if info is not None else None
    return (Path(base) if base else Path.cwd()).joinpath(path).resolve()


def _local_path(value: Path, info: ValidationInfo) -> Path:
    return resolve_path(value, info)


LocalPath = Annotated[Path, AfterValidator(_local_path)]
"""A path on the machine that reads the spec; relative paths resolve against the spec's directory."""


def _input(value: str, info: ValidationInfo) -> str:
    if value.startswith("stage:"):
        name, _, output = value[len("stage:"):].partition(".")
        if not NAME_RE.match(name) or (output and not re.fullmatch(r"[a-z_]+", output)):
            raise ValueError(f"bad stage reference {value!r}: expected stage:NAME or stage:NAME.OUTPUT")
        return value
    if value.startswith("store:"):
        from cleftgan_hpc.storage.base import check_key

        try:
            check_key(value[len("store:"):])
        except Exception as exc:
            raise ValueError(str(exc)) from None
        return value
    if not value:
        raise ValueError("empty input: expected a path, store:KEY or stage:NAME[.OUTPUT]")
    return str(resolve_path(value, info))


Input = Annotated[str, AfterValidator(_input)]
"""Where a stage reads a file from: a local path (relative to the spec), ``store:KEY`` (a key in
the job's store) or ``stage:NAME[.OUTPUT]`` (what an earlier stage of the same run produced)."""


def stage_ref(value: str) -> tuple[str, str | None] | None:
    """(stage, output) when ``value`` is a stage reference, else None."""
    if not value.startswith("stage:"):
        return None
    name, _, output = value[len("stage:"):].partition(".")
    return name, (output or None)


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class StoreConfig(Strict):
    """Where runs, checkpoints and datasets live. Credentials never go here: boto3 reads them
    from the environment (AWS_ACCESS_KEY_ID, ...) or from the named profile."""

    url: str = Field(
        "file://./store",
        description="file://DIR (relative to the spec's directory) or s3://BUCKET[/PREFIX].",
    )
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for S3-compatible servers (SeaweedFS, MinIO, Ceph); AWS if unset."
    )
    region: str | None = Field(None, description="S3 region; boto3's default chain if unset.")
    profile: str | None = Field(None, description="AWS profile name from ~/.aws/config.")

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str, info: ValidationInfo) -> str:
        if v.startswith("file://"):
            if len(v) == len("file://"):
                raise ValueError("file:// needs a directory, e.g. file://./store")
            return "file://" + str(resolve_path(v[len("file://"):], info))
        if v.startswith("s3://"):
            bucket = v[5:].split("/", 1)[0]
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
                raise ValueError(f"bad bucket name {bucket!r}: 3-63 lower-case letters, digits, '.' or '-'")
            return v.rstrip("/")
        raise ValueError(f"unsupported store URL {v!r}: expected file://DIR or s3://BUCKET/PREFIX")

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def local_root(self) -> Path:
        """The directory of a file:// store."""
        return Path(self.url[len("file://"):])


class Resources(Strict):
    """What a stage asks of the machine it runs on. The local backend uses gpus and
    cpus_per_task; the Slurm backend maps every field to sbatch options."""

    gpus: int = Field(0, ge=0, le=64, description="GPUs per node; 0 runs on the CPU.")
    cpus_per_task: int = Field(2, ge=1, le=1024, description="CPU cores for the stage (worker pools size to it).")
    mem_gb: float = Field(8, gt=0, le=16384, description="Memory in GiB.")
    time: str = Field("04:00:00", description="Wall-clock limit as [D-]HH:MM:SS.")

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", v):
            raise ValueError(f"bad time {v!r}: expected [D-]HH:MM:SS, e.g. 04:00:00 or 2-00:00:00")
        return v


class StageBase(Strict):
    """Fields every stage has, whatever its kind."""

    needs: list[str] = Field(
        default_factory=list,
        description="Stages that must finish first. Stages referenced as 'stage:NAME' inputs are added automatically.",
    )
    resources: Resources | None = Field(None, description="Overrides the job's default resources for this stage.")




def input_fields(model: type[BaseModel]) -> list[str]:
    """Names of the fields of a stage model typed as ``Input`` (files it reads)."""
    return [
        name
        for name, info in model.model_fields.items()
        if any(isinstance(m, AfterValidator) and m.func is _input for m in info.metadata)
        or any(
            isinstance(m, AfterValidator) and m.func is _input
            for arg in getattr(info.annotation, "__args__", ())
            for m in getattr(arg, "__metadata__", ())
        )
    ]

"""The typed job spec: store, backend, resources and named stages (pydantic v2 models).

Every field documents itself (``description``) so that ``cleftgan-hpc schema`` and the
docs/reference.md are generated from, and agree with, the code.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

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
        from cleftgan_hpc.jobspec.grid import INSTANCE_RE

        name, output = stage_ref(value)  # type: ignore[misc]
        if not (NAME_RE.match(name) or INSTANCE_RE.match(name)) or (output and not re.fullmatch(r"[a-z_]+", output)):
            raise ValueError(f"bad stage reference {value!r}: expected stage:NAME or stage:NAME.OUTPUT")
        return value
    if value.startswith("store:"):
        from cleftgan_hpc.layout import check_key

        try:
            check_key(value[len("store:"):])
        except Exception as exc:
            raise ValueError(str(exc)) from None
        return value
    if not value:
        raise ValueError("empty input: expected a path, store:KEY or stage:NAME[.OUTPUT]")
    return str(resolve_path(value, info))


_input.reads_input = True  # type: ignore[attr-defined]
Input = Annotated[str, AfterValidator(_input)]
"""Where a stage reads a file from: a local path (relative to the spec), ``store:KEY`` (a key in
the job's store) or ``stage:NAME[.OUTPUT]`` (what an earlier stage of the same run produced)."""


def stage_ref(value: str) -> tuple[str, str | None] | None:
    """(stage, output) when ``value`` is a stage reference, else None. A grid instance's name
    holds its values in brackets, dots included: ``stage:train[0.6,bgc].network``."""
    if not value.startswith("stage:"):
        return None
    body = value[len("stage:"):]
    split = body.find("]") + 1 if "[" in body.split(".", 1)[0] else 0
    name, _, output = body[split:].partition(".")
    return body[:split] + name, (output or None)


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
MAX_TIME_DAYS = 365
"""The longest time limit a spec may ask for (clusters cap jobs at days to weeks)."""
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def plain_text(value: str, what: str = "value", max_len: int = 4096) -> str:
    """Reject control characters (newlines above all): every value may end up on one line of
    an sbatch script, and a newline there would start a line of its own."""
    if _CONTROL.search(value):
        raise ValueError(f"{what} {value!r} contains a control character (newline, tab...); write it on one line")
    if len(value) > max_len:
        raise ValueError(f"{what} is {len(value)} characters long; at most {max_len}")
    return value


def _slurm_name(v: str | None) -> str | None:
    if v is not None and not _SLURM_NAME.match(v):
        raise ValueError(f"bad Slurm name {v!r}: letters, digits, '_', '.', '+', '-' only")
    return v


SlurmName = Annotated[str, AfterValidator(_slurm_name)]
"""A partition, account or QOS name."""


class Resources(Strict):
    """What a stage asks of the machine it runs on. The local backend uses gpus and
    cpus_per_task; the Slurm backend maps every field to sbatch options. A stage's
    ``resources`` override the job's field by field."""

    gpus: int = Field(0, ge=0, le=64, description="GPUs per node; 0 runs on the CPU. On Slurm: --gpus-per-node.")
    cpus_per_task: int = Field(2, ge=1, le=1024, description="CPU cores for the stage (worker pools size to it).")
    mem_gb: float = Field(8, gt=0, le=16384, description="Memory in GiB (per node on Slurm: --mem).")
    time: str = Field("04:00:00", description="Wall-clock limit as [D-]HH:MM:SS.")
    nodes: int = Field(1, ge=1, le=4096, description="Slurm nodes; a fine-tune runs one task per GPU on each.")
    partition: SlurmName | None = Field(
        None, description="Slurm partition; default: the slurm block's, else the cluster's."
    )
    account: SlurmName | None = Field(None, description="Slurm account to charge; default: the slurm block's.")
    qos: SlurmName | None = Field(None, description="Slurm quality of service; default: the slurm block's.")
    constraint: str | None = Field(None, description="Slurm node features, e.g. 'a100|h100' (--constraint).")
    exclude: str | None = Field(None, description="Slurm nodes never to use, e.g. 'gpu[01-03]' (--exclude).")
    sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="Further sbatch options as name: value (--name=value; true for a bare flag), "
        "e.g. {reservation: maint, mail-type: END}.",
    )

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        m = re.fullmatch(r"(?:(\d{1,3})-)?(\d{1,2}):([0-5]\d):([0-5]\d)", v)
        if not m:
            raise ValueError(f"bad time {v!r}: expected [D-]HH:MM:SS, e.g. 04:00:00 or 2-00:00:00")
        days, hours = int(m.group(1) or 0), int(m.group(2))
        if m.group(1) and hours > 23:
            raise ValueError(f"bad time {v!r}: with days, hours are 00-23 (e.g. 1-12:00:00)")
        if days * 24 + hours > MAX_TIME_DAYS * 24:
            raise ValueError(f"time {v!r} is over {MAX_TIME_DAYS} days; no cluster grants that")
        return v

    @field_validator("constraint", "exclude")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        if v is not None:
            plain_text(v, "value", 1024)
            if not v.strip() or any(c.isspace() for c in v):
                raise ValueError(f"bad value {v!r}: no spaces")
        return v

    @field_validator("sbatch")
    @classmethod
    def _sbatch(cls, v: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        for key, value in v.items():
            if not _SBATCH_KEY.match(key):
                raise ValueError(f"bad sbatch option {key!r}: the long name without dashes, e.g. 'mail-type'")
            if key in RESERVED_SBATCH:
                raise ValueError(f"sbatch option {key!r} is set by cleftgan-hpc; {RESERVED_SBATCH[key]}")
            if isinstance(value, str):
                plain_text(value, f"sbatch option {key}")
            if value is False:
                raise ValueError(f"sbatch option {key!r}: false is not a value; leave the option out")
        return v

    def time_minutes(self) -> int:
        """The time limit in whole minutes, rounded up (what submitit takes)."""
        days, _, hms = self.time.rpartition("-")
        h, m, s = (int(x) for x in hms.split(":"))
        return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


RESERVED_SBATCH = {
    "job-name": "the stage name is used",
    "output": "logs go to slurm.log_dir",
    "error": "logs go to slurm.log_dir",
    "array": "arrays come from the stage (array_tasks) and slurm.array_parallelism",
    "dependency": "dependencies come from the stages' needs",
    "signal": "set slurm.signal_delay_s instead",
    "open-mode": "logs are appended across requeues",
    "wrap": "the command is the stage",
    "time": "use resources.time",
    "partition": "use resources.partition", "account": "use resources.account", "qos": "use resources.qos",
    "mem": "use resources.mem_gb", "nodes": "use resources.nodes", "cpus-per-task": "use resources.cpus_per_task",
    "gpus-per-node": "use resources.gpus",
}


def _setup_line(v: str) -> str:
    import shlex

    plain_text(v, "setup line")
    try:
        words = shlex.split(v)
    except ValueError as exc:
        raise ValueError(f"cannot split setup line {v!r} into words: {exc}") from None
    if not words:
        raise ValueError("empty setup line")
    return v


SetupLine = Annotated[str, AfterValidator(_setup_line)]
"""A command with its arguments, split into words like a shell does (quotes group words)."""


class ContainerConfig(Strict):
    """The container every stage's job runs in. Apptainer: ``apptainer exec [--nv] [--bind ...]
    IMAGE python ...``; pyxis (enroot): ``srun --container-image=IMAGE --container-mounts=...``."""

    runtime: Literal["apptainer", "pyxis"] = Field(
        description="apptainer (or singularity) or pyxis (srun --container-*)."
    )
    image: str = Field(description="Apptainer: a .sif path or docker://...; pyxis: an image name or a .sqsh path.")
    binds: list[str] = Field(
        default_factory=list, description="Apptainer only: --bind SRC[:DST[:OPTS]] entries (data, scratch, the store)."
    )
    nv: bool = Field(True, description="Apptainer only: --nv, the host's NVIDIA driver inside the container.")
    executable: str = Field("apptainer", description="Apptainer only: the command, apptainer or singularity.")
    mounts: list[str] = Field(
        default_factory=list, description="Pyxis only: --container-mounts SRC:DST[:FLAGS] entries."
    )
    workdir: str | None = Field(None, description="Pyxis only: --container-workdir.")
    python: str = Field(
        "python", description="The Python interpreter inside the container (with cleftgan-hpc installed)."
    )

    @field_validator("image", "executable", "python", "workdir")
    @classmethod
    def _word(cls, v: str | None) -> str | None:
        if v is not None:
            plain_text(v)
            if not v or v != v.strip():
                raise ValueError(f"bad value {v!r}: empty or surrounded by spaces")
        return v

    @field_validator("binds", "mounts")
    @classmethod
    def _mounts(cls, v: list[str]) -> list[str]:
        for item in v:
            plain_text(item, "mount")
            if not item or "," in item or item != item.strip():
                raise ValueError(f"bad mount {item!r}: SRC[:DST[:OPTS]], one per list item, no commas")
        return v

    @model_validator(mode="after")
    def _runtime_fields(self) -> ContainerConfig:
        if self.runtime == "pyxis" and self.binds:
            raise ValueError("binds are for runtime: apptainer; pyxis uses mounts")
        if self.runtime == "apptainer" and (self.mounts or self.workdir):
            raise ValueError("mounts and workdir are for runtime: pyxis; apptainer uses binds")
        return self


class SlurmConfig(Strict):
    """How the Slurm backend submits the job's stages (used when ``backend: slurm``)."""

    partition: SlurmName | None = Field(
        None, description="Default partition of every stage; the cluster's default if unset."
    )
    account: SlurmName | None = Field(None, description="Default account of every stage.")
    qos: SlurmName | None = Field(None, description="Default QOS of every stage.")
    container: ContainerConfig | None = Field(
        None, description="Run every stage in this container; without it, in the submitting Python on the nodes."
    )
    setup: list[SetupLine] = Field(
        default_factory=list,
        description="Commands run before each stage, e.g. 'module load cuda/12.1'. Each line is one command "
        "with literal arguments ($NAME expands at run time; ;, |, &&, $(...) and redirections do not work).",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables set in every job (literal values)."
    )
    array_parallelism: int = Field(
        16, ge=1, le=100_000, description="At most this many array tasks of a stage run at once."
    )
    max_array_size: int | None = Field(
        None, ge=1, le=4_000_001,
        description="Split larger arrays into several jobs; unset: the cluster's MaxArraySize.",
    )
    signal_delay_s: int = Field(
        120, ge=10, le=3600, description="Seconds before the time limit at which a stage is told to checkpoint."
    )
    max_requeues: int = Field(3, ge=0, le=1000, description="How many time-outs a stage may be requeued after.")
    log_dir: LocalPath = Field(
        "slurm-logs",  # type: ignore[assignment]
        validate_default=True,
        description="Job scripts and logs, on a file system the compute nodes share (relative to the spec).",
    )
    python: str | None = Field(None, description="Python on the compute nodes without a container; default: this one.")

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _ENV_KEY.match(key):
                raise ValueError(f"bad environment variable name {key!r}")
            plain_text(value, f"env {key}")
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str | None) -> str | None:
        return None if v is None else plain_text(v, "python")

    @field_validator("log_dir")
    @classmethod
    def _log_dir(cls, v: Path) -> Path:
        plain_text(str(v), "log_dir")
        return v


class StageBase(Strict):
    """Fields every stage has, and the contract every stage kind declares.

    A kind is a subclass in ``jobspec/kinds/<kind>.py`` with ``kind: Literal["<kind>"]``, listed
    in ``jobspec/stages.py``; its function is ``run(cfg, ctx) -> outputs`` in
    ``stages/<kind>.py``. The class attributes and properties below say what the planner and
    the backends need to know; their defaults fit a stage that runs as one process.
    """

    needs: list[str] = Field(
        default_factory=list,
        description="Stages that must finish first. Stages referenced as 'stage:NAME' inputs are added automatically.",
    )
    resources: Resources | None = Field(None, description="Overrides the job's default resources for this stage.")

    # -- the contract of a stage kind ------------------------------------------------------
    outputs: ClassVar[dict[str, str]] = {}
    """Output name -> file (or folder) name under the stage's prefix in the store."""
    default_output: ClassVar[str | None] = None
    """The output ``stage:NAME`` refers to (``stage:NAME.OUTPUT`` names another)."""
    reusable_changes: ClassVar[frozenset[str]] = frozenset()
    """Fields that may change between runs of the same run id without discarding the stage's
    saved work (checkpoints, progress): the stage checks what it can reuse. A change to any
    other field starts the stage over."""
    task_per_gpu: ClassVar[bool] = False
    """Slurm: one task per GPU, each a data-parallel rank (otherwise one task per job)."""
    ray_cluster: ClassVar[bool] = False
    """Slurm: the job starts a Ray cluster across its nodes before the stage runs."""
    gathers: ClassVar[str | None] = None
    """The field naming a stage whose grid instances this stage reads all at once (it depends on
    every instance instead of fanning out with them); None: an ordinary stage."""

    @property
    def world_size(self) -> int:
        """Data-parallel processes the stage runs (the local backend starts one per rank)."""
        return 1

    @property
    def data_parallel_gpus(self) -> int:
        """GPUs the stage trains on across all its processes, checked against its resources; 0: none."""
        return 0

    @property
    def wants_gpu(self) -> bool:
        """Whether the stage's own settings ask for a GPU (besides its resources asking for one)."""
        return self.data_parallel_gpus > 0

    def array_tasks(self) -> int:
        """Slurm array tasks the stage splits into (each runs a part, then a commit job); 0: one job."""
        return 0




def config_digest(data: Any) -> str:
    """The one digest of a configuration (a plan's fingerprints, what a checkpoint was trained
    with): 16 hex digits of the sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def input_fields(model: type[BaseModel]) -> list[str]:
    """Names of the fields of a stage model that read files (typed ``Input`` or marked ``reads_input``)."""

    def reads(metadata: list[object]) -> bool:
        return any(isinstance(m, AfterValidator) and getattr(m.func, "reads_input", False) for m in metadata)

    return [
        name
        for name, info in model.model_fields.items()
        if reads(info.metadata)
        or any(reads(getattr(a, "__metadata__", ())) for a in getattr(info.annotation, "__args__", ()))
    ]

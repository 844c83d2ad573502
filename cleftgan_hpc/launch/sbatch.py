"""Pure pieces of the Slurm backend: shell-safe lines from spec values, sbatch options from
resources, the plain sbatch script of `cleftgan-hpc render`, and reading sacct/scontrol.

Nothing here imports submitit or runs a shell: every value from a spec reaches a script only
through ``quote_word`` (single quotes; ``$NAME`` is the one thing allowed to expand) or
``shlex.quote``, and the spec models already rejected control characters (a newline would
start a script line of its own).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cleftgan_hpc.errors import SECRET_NAME, LaunchError
from cleftgan_hpc.jobspec.job import JobSpec
from cleftgan_hpc.jobspec.models import ContainerConfig, Resources, StageBase

_VARREF = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_line(text: str, what: str) -> str:
    """Refuse anything that could end a script line (the spec models already do; this guards callers)."""
    if _CONTROL.search(text):
        raise LaunchError(f"{what} {text!r} contains a control character; refusing to put it in a job script")
    return text


def quote_word(word: str) -> str:
    """One shell word whose only expansions are ``$NAME`` / ``${NAME}`` (environment variables at
    job time). Everything else, including ``$(...)``, backquotes, ``;`` and globs, stays literal."""
    check_line(word, "word")
    out, pos = [], 0
    for m in _VARREF.finditer(word):
        if m.start() > pos:
            out.append(shlex.quote(word[pos:m.start()]))
        out.append('"${' + (m.group(1) or m.group(2)) + '}"')
        pos = m.end()
    if pos < len(word) or not out:
        out.append(shlex.quote(word[pos:]))
    return "".join(out)


def setup_line(line: str) -> str:
    """A spec setup line as one shell command with literal arguments (see ``quote_word``)."""
    words = shlex.split(check_line(line, "setup line"))
    if not words:
        raise LaunchError("empty setup line")
    return " ".join(quote_word(w) for w in words)


def setup_lines(spec: JobSpec, resources: Resources) -> list[str]:
    """The lines a job runs before its stage: the spec's setup commands, then its environment."""
    lines = [setup_line(s) for s in spec.slurm.setup]
    env = {"OMP_NUM_THREADS": str(resources.cpus_per_task), **spec.slurm.env}
    lines += [f"export {k}={env_value(check_line(v, 'env ' + k))}" for k, v in env.items()]
    return lines


def env_value(value: str) -> str:
    """An environment value as one shell word: literal, except ``${NAME}`` of a credential, which
    the spec reader leaves for the job to expand from its own environment (so the secret is
    never written into the script)."""
    out, pos = [], 0
    for m in _VARREF.finditer(value):
        name = m.group(2)
        if not name or not SECRET_NAME.search(name):
            continue
        if m.start() > pos:
            out.append(shlex.quote(value[pos:m.start()]))
        out.append('"${' + name + '}"')
        pos = m.end()
    if pos < len(value) or not out:
        out.append(shlex.quote(value[pos:]))
    return "".join(out)


def container_binds(spec: JobSpec) -> list[str]:
    """What a container must see besides the spec's binds: the job logs, and a file:// store."""
    paths = [str(spec.slurm.log_dir)]
    if spec.store.scheme == "file":
        paths.append(str(spec.store.local_root))
    return paths


def python_words(spec: JobSpec, default_python: str) -> list[str]:
    """The interpreter a job runs, as words: apptainer exec ... IMAGE python, or plain python."""
    c: ContainerConfig | None = spec.slurm.container
    if c is None:
        return [spec.slurm.python or default_python]
    if c.runtime == "pyxis":
        return [c.python]
    words = [c.executable, "exec"]
    if c.nv:
        words.append("--nv")
    for b in [*c.binds, *container_binds(spec)]:
        words += ["--bind", b]
    return [*words, c.image, c.python]


def srun_words(spec: JobSpec) -> list[str]:
    """Extra srun arguments: pyxis's --container-* options."""
    c = spec.slurm.container
    if c is None or c.runtime != "pyxis":
        return []
    mounts = [*c.mounts, *(f"{p}:{p}" for p in container_binds(spec))]
    words = [f"--container-image={c.image}", f"--container-mounts={','.join(mounts)}"]
    if c.workdir:
        words.append(f"--container-workdir={c.workdir}")
    return words


@dataclass(frozen=True)
class Shape:
    """What a stage asks of Slurm besides its resources (see the contract in launch/slurm.py)."""

    array_tasks: int  # 0: one job; N >= 1: an array of N tasks plus a commit job
    tasks_per_node: int  # srun tasks per node: one per GPU for stages that train across GPUs


def stage_shape(config: StageBase, resources: Resources) -> Shape:
    n = config.array_tasks()
    if n < 0:
        raise LaunchError(f"array_tasks() returned {n}")
    return Shape(n, max(1, resources.gpus) if config.task_per_gpu else 1)


def resource_options(spec: JobSpec, res: Resources) -> dict[str, str | int | bool]:
    """Resources as sbatch long options (without the leading --), the slurm block's defaults applied."""
    opts: dict[str, str | int | bool] = {
        "time": res.time,
        "nodes": res.nodes,
        "cpus-per-task": res.cpus_per_task,
        "mem": mem_option(res.mem_gb),
    }
    if res.gpus:
        opts["gpus-per-node"] = res.gpus
    for key in ("partition", "account", "qos"):
        value = getattr(res, key) or getattr(spec.slurm, key)
        if value:
            opts[key] = value
    if res.constraint:
        opts["constraint"] = res.constraint
    if res.exclude:
        opts["exclude"] = res.exclude
    opts.update(res.sbatch)
    return opts


def mem_option(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}M"


def sbatch_flag(key: str, value: str | int | bool) -> str:
    check_line(str(value), f"sbatch option {key}")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def render_script(spec: JobSpec, run_id: str, stage: str, default_python: str) -> str:
    """A plain sbatch script that runs one stage of one run (for users who submit by hand).

    It needs the run to exist in the store (``render`` saves the spec there); exit code 75 from
    the stage (stopped on request, checkpoint written) requeues the job."""
    import json

    res = spec.resources_of(stage)
    shape = stage_shape(spec.stages[stage], res)
    log_dir = Path(spec.slurm.log_dir) / run_id / stage
    opts: dict[str, str | int | bool] = {
        "job-name": f"{spec.name}.{stage}",
        **resource_options(spec, res),
        "ntasks-per-node": shape.tasks_per_node,
        "signal": f"USR2@{spec.slurm.signal_delay_s}",
        "requeue": True,
        "open-mode": "append",
        "output": str(log_dir / ("%A_%a.out" if shape.array_tasks else "%j.out")),
    }
    if shape.array_tasks:
        opts["array"] = f"0-{shape.array_tasks - 1}%{min(shape.array_tasks, spec.slurm.array_parallelism)}"
    lines = ["#!/bin/bash", f"# cleftgan-hpc: stage {stage} of run {run_id} (job {spec.name})"]
    lines += [sbatch_flag(k, v) for k, v in opts.items()]
    lines += ["", "# log_dir must exist before sbatch opens the log:", f"#   mkdir -p {shlex.quote(str(log_dir))}"]
    lines += ["", "# setup", *setup_lines(spec, res)]
    cmd = ["srun", "--unbuffered", *srun_words(spec), *python_words(spec, default_python), "-u", "-m",
           "cleftgan_hpc.execute", "--store", json.dumps(spec.store.model_dump(mode="json")),
           "--run", run_id, "--stage", stage]
    line = shlex.join(cmd) + (' --task "${SLURM_ARRAY_TASK_ID}"' if shape.array_tasks else "")
    lines += ["", "# the stage (exit 75: stopped on request with a checkpoint written: requeue)",
              line, "rc=$?",
              'job="${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}"',
              'if [ "$rc" -eq 75 ]; then scontrol requeue "$job"; fi',
              'exit "$rc"', ""]
    if shape.array_tasks:
        lines.insert(-1, "# after all tasks, the same command without --task commits the stage "
                         "(e.g. this script without --array, with --dependency=afterok:<this job>)")
    return "\n".join(lines)


# -- talking to Slurm ---------------------------------------------------------------------------------


def slurm_cmd(args: Sequence[str], timeout: float = 60) -> str:
    """Run a Slurm client command (no shell); LaunchError with its message when it fails."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise LaunchError(f"{args[0]} not found: run this on a Slurm login node (or load the slurm module)") from None
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{args[0]} did not answer in {timeout:.0f}s; is slurmctld up?") from None
    if proc.returncode != 0:
        raise LaunchError(f"{' '.join(args[:2])} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices must be below it)."""
    out = slurm_cmd(["scontrol", "show", "config"])
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else 1001  # Slurm's documented default


@dataclass
class JobState:
    job_id: str  # 123, 123_4 or 123_[5-7]
    state: str  # COMPLETED, RUNNING, PENDING, CANCELLED by 0 -> CANCELLED, ...
    exit_code: str
    reason: str


def sacct_states(job_ids: Sequence[str]) -> dict[str, list[JobState]]:
    """Allocation records per submitted job id (array tasks grouped under their array's id)."""
    if not job_ids:
        return {}
    out = slurm_cmd(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode,Reason", "-j", ",".join(job_ids)])
    found: dict[str, list[JobState]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        jid, state, code, reason = parts[:4]
        found.setdefault(jid.split("_", 1)[0], []).append(JobState(jid, state.split()[0], code, reason))
    return found


TERMINAL_OK = {"COMPLETED"}
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "PREEMPTED", "CONFIGURING", "COMPLETING",
          "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}


def summarize(states: list[JobState]) -> str:
    """'RUNNING' for one job; '3 COMPLETED, 1 RUNNING, 4 PENDING' for an array."""
    if len(states) == 1 and "_" not in states[0].job_id:
        s = states[0]
        why = f" ({s.reason})" if s.state == "PENDING" and s.reason not in ("", "None") else ""
        return s.state + why + (f" exit {s.exit_code}" if s.state == "FAILED" else "")
    counts: dict[str, int] = {}
    for s in states:
        n = _array_count(s.job_id)
        counts[s.state] = counts.get(s.state, 0) + n
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _array_count(job_id: str) -> int:
    """How many tasks '123_4' or '123_[0-3,5,7-9%2]' stands for."""
    m = re.search(r"_\[([^\]]*)\]", job_id)
    if not m:
        return 1
    n = 0
    for part in m.group(1).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) - int(lo) + 1) if hi else 1
    return n

"""CLI commands of the batch backends: submit, cancel, logs, render, doctor.

``add_commands(subparsers)`` adds them to `cleftgan-hpc`; each handler takes the parsed
arguments and returns the exit code, raising CleftGanError subclasses for user errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cleftgan_hpc.errors import CleftGanError, LaunchError


def _load(path: str):  # -> JobSpec
    from cleftgan_hpc.launch.start import load_job

    return load_job(path)


def _open_run(spec, run_id: str | None, *, create: bool):  # -> RunState
    from cleftgan_hpc.runs import open_run

    return open_run(spec, run_id, create=create)


def _require_slurm(spec, command: str) -> None:
    if spec.backend != "slurm":
        raise LaunchError(f"`{command}` is for backend: slurm; this spec says backend: {spec.backend} "
                          f"(use `cleftgan-hpc run` for it)")


def _stage(spec, name: str) -> str:
    if name not in spec.stages:
        raise CleftGanError(f"no stage {name!r} in {spec.name}; stages are: {', '.join(spec.stages)}")
    return name


def cmd_submit(args: argparse.Namespace) -> int:
    from cleftgan_hpc.launch.start import start_run

    spec = _load(args.spec)
    _require_slurm(spec, "submit")
    return start_run(args.spec, spec, args.run, args.force)


def cmd_cancel(args: argparse.Namespace) -> int:
    from cleftgan_hpc.launch.base import get_launcher
    from cleftgan_hpc.plan import make_plan

    spec = _load(args.spec)
    run = _open_run(spec, args.run, create=False)
    plan = make_plan(run.load_spec(), run.run_id)
    get_launcher(spec.backend).cancel(plan, run)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from submitit.core.utils import JobPaths  # only the path scheme; submits nothing

    from cleftgan_hpc.errors import ObjectNotFound
    from cleftgan_hpc.launch.slurm import read_record

    spec = _load(args.spec)
    stage = _stage(spec, args.stage)
    run = _open_run(spec, args.run, create=False)
    record = read_record(run, stage)
    shown = False
    jobs = record.get("jobs", [])
    if jobs:
        if args.task is not None:
            arrays = [j for j in jobs if j["kind"] == "array"]
            if arrays:
                chunk = max((j for j in arrays if j["offset"] <= args.task), key=lambda j: j["offset"], default=None)
                lo, hi = (int(x) for x in chunk["tasks"].split("-")) if chunk else (0, -1)
                if not chunk or args.task > hi:
                    raise CleftGanError(f"stage {stage} has array tasks 0-{int(arrays[-1]['tasks'].split('-')[1])}")
                job_id, task = f"{chunk['id']}_{args.task - lo}", 0
                if lo == hi:  # a one-task chunk is submitted as a plain job
                    job_id = chunk["id"]
            else:
                job_id, task = jobs[-1]["id"], args.task  # the srun task (rank) of a multi-task job
        else:
            job_id, task = jobs[-1]["id"], 0
        paths = JobPaths(record["folder"], job_id=job_id, task_id=task)
        for what, path in (("stdout", paths.stdout), ("stderr", paths.stderr)):
            if path.exists():
                print(f"==> {path} ({what}) <==")
                sys.stdout.write(path.read_text(errors="replace"))
                shown = True
        if not shown:
            print(f"no log files yet for job {job_id} in {record['folder']} (queued, or held by a dependency)")
    try:
        text = run.store.get_text(run.key(stage, "log.txt"))
        print(f"==> {run.store.uri(run.key(stage, 'log.txt'))} (stage log in the store) <==")
        sys.stdout.write(text)
        shown = True
    except ObjectNotFound:
        pass
    if not shown and not jobs:
        raise CleftGanError(f"no logs for stage {stage} of run {run.run_id} yet")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from cleftgan_hpc.launch.sbatch import render_script

    spec = _load(args.spec)
    stage = _stage(spec, args.stage)
    run = _open_run(spec, args.run, create=True)
    if not run.exists():
        run.save_spec(spec)
        print(f"# created run {run.run_id} in {spec.store.url} (the script runs its stage {stage})", file=sys.stderr)
    log_dir = Path(spec.slurm.log_dir) / run.run_id / stage
    try:  # sbatch cannot open a log in a directory that does not exist
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"# could not create {log_dir} ({exc}): create it before sbatch", file=sys.stderr)
    python = spec.slurm.python or sys.executable
    print(render_script(spec, run.run_id, stage, python))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from cleftgan_hpc.launch.doctor import FAIL, run_checks

    store = None
    if args.spec:
        store = _load(args.spec).store
    elif args.store:
        from cleftgan_hpc.jobspec.models import StoreConfig

        store = StoreConfig.model_validate({"url": args.store}, context={"base_dir": Path.cwd()})
    checks = run_checks(store, require_gpus=args.gpus)
    for c in checks:
        print(c)
    failed = [c for c in checks if c.level == FAIL]
    print(f"doctor: {len(failed)} problem(s)" if failed else "doctor: fit to run stages")
    return 1 if failed else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add submit, cancel, logs, render and doctor to the `cleftgan-hpc` subcommands."""
    from cleftgan_hpc.launch.start import add_run_arguments

    s = sub.add_parser("submit", help="submit a job to Slurm (backend: slurm) and return at once")
    add_run_arguments(s)
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("cancel", help="cancel the queued and running stages of a run (default: the latest)")
    s.add_argument("spec")
    s.add_argument("--run")
    s.set_defaults(func=cmd_cancel)

    s = sub.add_parser("logs", help="print the Slurm logs and the stage log of one stage")
    s.add_argument("spec")
    s.add_argument("stage")
    s.add_argument("--run")
    s.add_argument("--task", type=int, help="array task index (or srun task of a multi-GPU job)")
    s.set_defaults(func=cmd_logs)

    s = sub.add_parser("render", help="print a plain sbatch script for one stage (to submit by hand)")
    s.add_argument("spec")
    s.add_argument("--stage", required=True)
    s.add_argument("--run", help="run id (created in the store if new)")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("doctor", help="check torch/CUDA, GPUs, compiled kernels, the store and Slurm here")
    s.add_argument("spec", nargs="?", help="check this job's store too")
    s.add_argument("--store", help="a store URL to check instead of a spec's")
    s.add_argument("--gpus", type=int, default=0, help="fail unless at least this many GPUs are visible")
    s.set_defaults(func=cmd_doctor)

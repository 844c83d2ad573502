"""Starting a run, the same way on every backend: `cleftgan-hpc run` and `cleftgan-hpc submit`.

    check the spec and --force -> open (or create) the run -> refuse another job's run id ->
    save the resolved spec -> plan -> the backend launches -> say what happened and what next
    -> ``on_end`` (the command line's: write the run's report) when the backend ran it to its end

``on_end`` is a parameter because the report sits above the backends (floor 8): this module
cannot import it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.grid import base_name
from cleftgan_hpc.jobspec.job import JobSpec
from cleftgan_hpc.jobspec.load import load_spec
from cleftgan_hpc.launch.base import get_launcher
from cleftgan_hpc.plan import make_plan
from cleftgan_hpc.runs import RunState, format_status, open_run


def load_job(path: str) -> JobSpec:
    """The validated spec at ``path``; its warnings go to stderr (errors raise SpecError)."""
    loaded = load_spec(path)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return loaded.spec


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of every command that starts a run."""
    p.add_argument("spec")
    p.add_argument("--run", help="run id; an existing run resumes (or is resubmitted), skipping stages that are done")
    p.add_argument("--force", nargs="+", default=[], metavar="STAGE", help="run these stages (and what follows) again")


def start_run(spec_path: str, spec: JobSpec, run_id: str | None, force: list[str],
              on_end: Callable[[RunState], str | None] | None = None) -> int:
    """Launch ``spec`` on its backend; the exit code for the command line. When the backend ran
    the run to its end (done, failed or interrupted), ``on_end(run)`` is called and the line it
    returns is printed last."""
    force = forced_stages(spec, force)
    run = open_run(spec, run_id, create=True)
    resumed = run.exists()
    if resumed:
        refuse_foreign(spec, run)
    launcher = get_launcher(spec.backend)
    run.save_spec(spec)
    plan = make_plan(spec, run.run_id)
    verb = ("resuming" if resumed else "starting") if launcher.runs_to_completion else (
        "resubmitting" if resumed else "submitting")
    print(f"{verb} run {run.run_id} of {spec.name} ({len(plan.stages)} stages, {spec.backend} backend, "
          f"store {spec.store.url})", flush=True)
    t0 = time.monotonic()
    try:
        ok = launcher.launch(plan, run, set(force))
    except KeyboardInterrupt:
        if on_end is not None and (line := on_end(run)):  # an interrupted run's report shows where it stopped
            print(line, flush=True)
        raise
    if not launcher.runs_to_completion:
        print(f"\nfollow it with: cleftgan-hpc status {spec_path} --run {run.run_id}")
        print(f"logs of a stage: cleftgan-hpc logs {spec_path} STAGE --run {run.run_id}")
        return 0
    print()
    print(format_status(plan, run))
    if ok:
        took = time.monotonic() - t0
        print(f"\nrun {run.run_id} finished in {took:.1f}s; outputs under {run.store.uri(run.prefix)}/")
    else:
        print(f"\nrun {run.run_id} did not finish; fix the cause and resume with: "
              f"cleftgan-hpc run {spec_path} --run {run.run_id}")
    if on_end is not None and (line := on_end(run)):
        print(line)
    return 0 if ok else 1


def forced_stages(spec: JobSpec, names: list[str]) -> list[str]:
    """The stages --force names: a grid stage's name stands for all its instances."""
    out, unknown = [], []
    for name in names:
        hits = [name] if name in spec.stages else [s for s in spec.stages if base_name(s) == name]
        (out.extend(hits) if hits else unknown.append(name))
    if unknown:
        raise CleftGanError(f"--force names unknown stage(s) {unknown}; stages are: {', '.join(spec.stages)}")
    return out


def refuse_foreign(spec: JobSpec, run: RunState) -> None:
    """A run id belongs to the job that created it: another job must not overwrite its spec."""
    stored = run.load_spec()
    if stored.name != spec.name:
        raise CleftGanError(
            f"run {run.run_id!r} belongs to job {stored.name!r}, not {spec.name!r}; choose another --run"
        )

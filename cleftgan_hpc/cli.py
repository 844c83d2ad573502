"""The `cleftgan-hpc` command. Every user error is printed as clear lines, never a traceback.

validate and plan import neither torch nor a backend, so they are instant on a login node.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from cleftgan_hpc import __version__
from cleftgan_hpc.errors import CleftGanError, SpecError


def _load(path: str):  # -> LoadedSpec
    from cleftgan_hpc.jobspec.load import load_spec

    loaded = load_spec(path)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return loaded


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = _load(args.spec)
    print(f"{args.spec}: ok ({len(loaded.spec.stages)} stages: {', '.join(loaded.spec.stages)})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from cleftgan_hpc.plan import format_plan, make_plan

    spec = _load(args.spec).spec
    print(format_plan(make_plan(spec, args.run or f"{spec.name}-<new>")))
    return 0


def _open_run(spec, run_id: str | None, *, create: bool):  # -> RunState
    from cleftgan_hpc.runs import open_run

    return open_run(spec, run_id, create=create)


def cmd_run(args: argparse.Namespace) -> int:
    from cleftgan_hpc.launch.base import get_launcher
    from cleftgan_hpc.plan import make_plan

    spec = _load(args.spec).spec
    if spec.backend == "slurm":  # a batch backend: submit and return, do not wait here
        from cleftgan_hpc.launch.commands import cmd_submit

        print("backend: slurm: submitting (run returns once the jobs are queued)", flush=True)
        return cmd_submit(args)
    unknown = [s for s in args.force if s not in spec.stages]
    if unknown:
        raise CleftGanError(f"--force names unknown stage(s) {unknown}; stages are: {', '.join(spec.stages)}")
    run = _open_run(spec, args.run, create=True)
    resumed = run.exists()
    if resumed:
        _refuse_foreign_or_busy(spec, run)
    run.save_spec(spec)
    plan = make_plan(spec, run.run_id)
    print(
        f"{'resuming' if resumed else 'starting'} run {run.run_id} of {spec.name} "
        f"({len(plan.stages)} stages, {spec.backend} backend, store {spec.store.url})",
        flush=True,
    )
    t0 = time.monotonic()
    ok = get_launcher(spec.backend).launch(plan, run, set(args.force))
    print()
    print(format_status(plan, run))
    took = time.monotonic() - t0
    if ok:
        print(f"\nrun {run.run_id} finished in {took:.1f}s; outputs under {run.store.uri(run.prefix)}/")
        return 0
    print(
        f"\nrun {run.run_id} did not finish; fix the cause and resume with: "
        f"cleftgan-hpc run {args.spec} --run {run.run_id}"
    )
    return 1


def _alive(pid: int) -> bool:
    """A live process (not a zombie left by a dead parent)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _refuse_foreign_or_busy(spec, run) -> None:
    import socket

    stored = run.load_spec()
    if stored.name != spec.name:
        raise CleftGanError(
            f"run {run.run_id!r} belongs to job {stored.name!r}, not {spec.name!r}; choose another --run"
        )
    for name in stored.stages:
        st = run.status(name)
        if st.state == "running" and st.host == socket.gethostname() and st.pid and _alive(st.pid):
            raise CleftGanError(
                f"stage {name!r} of run {run.run_id} is running now (pid {st.pid}); "
                "wait for it or stop it before running the job again"
            )


def format_status(plan, run, extra: dict[str, str] | None = None) -> str:
    def when(t: float | None) -> str:
        return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"

    rows = [("STAGE", "KIND", "STATE", "TRY", "STARTED", "TOOK", "HOST", "DETAIL")]
    for s in plan.stages:
        st = run.status(s.name)
        took = (
            f"{st.finished - st.started:.1f}s"
            if st.started and st.finished
            else (f"{time.time() - st.started:.0f}s+" if st.started and st.state == "running" else "-")
        )
        detail = (extra or {}).get(s.name) or (st.error or "").split("\n", 1)[0][:120]
        rows.append((s.name, s.kind, st.state, str(st.attempt), when(st.started), took, st.host or "-", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_status(args: argparse.Namespace) -> int:
    from cleftgan_hpc.launch.base import get_launcher
    from cleftgan_hpc.plan import make_plan

    spec = _load(args.spec).spec
    run = _open_run(spec, args.run, create=False)
    plan = make_plan(run.load_spec(), run.run_id)
    print(f"run {run.run_id} ({spec.store.url})")
    print(format_status(plan, run, get_launcher(spec.backend).describe(plan, run)))
    states = {run.status(s.name).state for s in plan.stages}
    return 0 if states == {"done"} else (1 if states & {"failed", "cancelled"} else 0)


def cmd_schema(args: argparse.Namespace) -> int:
    from cleftgan_hpc.jobspec.reference import spec_reference

    print(spec_reference())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cleftgan-hpc",
        description="CleftGAN (StyleGAN3-t + ADA transfer learning) as batch jobs: validate, plan and run job specs.",
    )
    p.add_argument("--version", action="version", version=f"cleftgan-hpc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", help="check a job spec; print every problem as FILE:LINE:COL")
    s.add_argument("spec")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("plan", help="print the stages in order with inputs, outputs and resources")
    s.add_argument("spec")
    s.add_argument("--run", help="run id to resolve store keys for")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("run", help="run a job on its backend (local: here, to completion)")
    s.add_argument("spec")
    s.add_argument("--run", help="run id; an existing run resumes, skipping stages that are done")
    s.add_argument("--force", nargs="+", default=[], metavar="STAGE", help="run these stages (and what follows) again")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="print the stage table of a run (default: the latest)")
    s.add_argument("spec")
    s.add_argument("--run")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("schema", help="print the spec reference (every field, default and meaning)")
    s.set_defaults(func=cmd_schema)

    from cleftgan_hpc.data.commands import add_commands as add_data_commands
    from cleftgan_hpc.launch.commands import add_commands as add_launch_commands
    from cleftgan_hpc.model.commands import add_commands as add_model_commands
    from cleftgan_hpc.synthesis.commands import add_commands as add_synthesis_commands

    add_launch_commands(sub)
    add_data_commands(sub)
    add_model_commands(sub)
    add_synthesis_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        n = len(exc.problems)
        print(f"{n} problem{'s' if n != 1 else ''} in {exc.problems[0].file}", file=sys.stderr)
        return 2
    except CleftGanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

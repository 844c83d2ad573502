"""The `cleftgan-hpc` command. Every user error is printed as clear lines, never a traceback.

validate and plan import neither torch nor a backend, so they are instant on a login node.
"""

from __future__ import annotations

import argparse
import sys

from cleftgan_hpc import __version__
from cleftgan_hpc.errors import CleftGanError, SpecError


def _load(path: str):  # -> JobSpec
    from cleftgan_hpc.launch.start import load_job

    return load_job(path)


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load(args.spec)
    print(f"{args.spec}: ok ({len(spec.stages)} stages: {', '.join(spec.stages)})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from cleftgan_hpc.plan import format_plan, make_plan

    spec = _load(args.spec)
    print(format_plan(make_plan(spec, args.run or f"{spec.name}-<new>")))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cleftgan_hpc.launch.start import start_run
    from cleftgan_hpc.report.commands import report_quietly

    return start_run(args.spec, _load(args.spec), args.run, args.force, None if args.no_report else report_quietly)


def cmd_status(args: argparse.Namespace) -> int:
    from cleftgan_hpc.launch.base import get_launcher
    from cleftgan_hpc.plan import make_plan
    from cleftgan_hpc.runs import format_status, open_run

    spec = _load(args.spec)
    run = open_run(spec, args.run, create=False)
    plan = make_plan(run.load_spec(), run.run_id)
    launcher = get_launcher(spec.backend)
    launcher.reconcile(plan, run)  # stages that died without a word are recorded as such first
    print(f"run {run.run_id} ({spec.store.url})")
    print(format_status(plan, run, launcher.describe(plan, run)))
    if not args.no_report:  # a batch run's report is refreshed here: no process of ours sees it end
        from cleftgan_hpc.report.commands import report_after_status

        report_after_status(run)
    states = {run.status(s.name).state for s in plan.stages}
    return 0 if states == {"done"} else (1 if states & {"failed", "cancelled"} else 0)


def cmd_schema(args: argparse.Namespace) -> int:
    from cleftgan_hpc.jobspec.reference import spec_reference

    print(spec_reference())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cleftgan_hpc.launch.start import add_run_arguments

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

    s = sub.add_parser("run", help="run a job on its backend (local: here, to completion; slurm: submit)")
    add_run_arguments(s)
    s.add_argument("--no-report", action="store_true", help="do not write the run's report page at its end")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="print the stage table of a run (default: the latest); refresh its report")
    s.add_argument("spec")
    s.add_argument("--run")
    s.add_argument("--no-report", action="store_true", help="do not refresh the run's report page")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("schema", help="print the spec reference (every field, default and meaning)")
    s.set_defaults(func=cmd_schema)

    from cleftgan_hpc.data.commands import add_commands as add_data_commands
    from cleftgan_hpc.launch.commands import add_commands as add_launch_commands
    from cleftgan_hpc.model.commands import add_commands as add_model_commands
    from cleftgan_hpc.report.commands import add_commands as add_report_commands
    from cleftgan_hpc.synthesis.commands import add_commands as add_synthesis_commands

    add_launch_commands(sub)
    add_data_commands(sub)
    add_model_commands(sub)
    add_synthesis_commands(sub)
    add_report_commands(sub)
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

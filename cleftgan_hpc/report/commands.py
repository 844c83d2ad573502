"""The `report` command, and the report written when a run ends (`run`) or is looked at (`status`).

    cleftgan-hpc report SPEC [--run ID] [--out FILE]        the job's store; the latest run by default
    cleftgan-hpc report --store URL --run ID [--out FILE]   any store, without the spec
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cleftgan_hpc.errors import CleftGanError, StorageError
from cleftgan_hpc.runs import RunState


def open_report_run(spec_path: str | None, store_url: str | None, run_id: str | None,
                    endpoint_url: str | None = None) -> RunState:
    """The run to report on: from the job spec's store (latest run unless ``run_id``), or from a store URL."""
    from cleftgan_hpc.runs import open_run

    if spec_path:
        from cleftgan_hpc.launch.start import load_job

        return open_run(load_job(spec_path), run_id, create=False)
    if not store_url or not run_id:
        raise CleftGanError("name the job spec (cleftgan-hpc report SPEC [--run ID]) or the store and the run "
                            "(--store URL --run ID)")
    from cleftgan_hpc.jobspec.models import StoreConfig
    from cleftgan_hpc.storage import open_store

    if "://" not in store_url:  # a plain directory: a file store, or a pulled copy of one
        store_url = "file://" + store_url
    try:
        cfg = StoreConfig.model_validate({"url": store_url, "endpoint_url": endpoint_url},
                                         context={"base_dir": Path.cwd()})
    except ValueError as exc:
        raise CleftGanError(f"bad store URL {store_url!r}: {str(exc).splitlines()[-1].strip()}") from None
    if cfg.scheme == "file" and not cfg.local_root.is_dir():  # opening a file store would create it
        raise CleftGanError(f"no store at {cfg.local_root} (not a directory)")
    run = RunState(open_store(cfg), run_id)
    if not run.exists():
        raise CleftGanError(f"no run {run_id!r} in {cfg.url} (no runs/{run_id}/spec.yaml there)")
    return run


def cmd_report(args: argparse.Namespace) -> int:
    from cleftgan_hpc.report.build import render_report, write_report

    run = open_report_run(args.spec, args.store, args.run, args.endpoint_url)
    if args.out:
        out = Path(args.out)
        try:
            out.write_text(render_report(run))
        except OSError as exc:
            raise CleftGanError(f"cannot write {out}: {exc.strerror or exc}") from None
        print(f"report of run {run.run_id}: {out}")
        return 0
    try:
        key = write_report(run)
    except StorageError as exc:
        raise CleftGanError(f"cannot write the report into the store ({exc}); use --out FILE instead") from None
    print(f"report of run {run.run_id}: {run.store.uri(key)}")
    return 0


def report_quietly(run: RunState) -> str | None:
    """Write the run's report; a line saying where, or why not. A report is never worth failing a
    run or a status over: every error becomes that line."""
    from cleftgan_hpc.report.build import write_report

    try:
        return f"the run's report: {run.store.uri(write_report(run))}"
    except Exception as exc:  # noqa: BLE001 - see above; the report command shows the error in full
        return f"warning: the run's report was not written ({type(exc).__name__}: {exc})"


def report_after_status(run: RunState) -> None:
    """`status` refreshes the report (the only look at a batch run after it ends); a note on stderr
    keeps stdout the table alone."""
    line = report_quietly(run)
    if line:
        print(line, file=sys.stderr)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `report` to the `cleftgan-hpc` subcommands."""
    s = sub.add_parser("report", help="write a run's report page (HTML) into the store, or to --out FILE")
    s.add_argument("spec", nargs="?", help="the job spec (its store); or give --store and --run")
    s.add_argument("--run", help="run id (default: the job's latest run)")
    s.add_argument("--store", metavar="URL", help="a store URL (file://DIR, s3://BUCKET/PREFIX) instead of a spec")
    s.add_argument("--endpoint-url", default=None, help="S3 endpoint with --store (SeaweedFS, MinIO...)")
    s.add_argument("--out", metavar="FILE", help="write the page here instead of runs/<run>/report.html in the store")
    s.set_defaults(func=cmd_report)

"""Run one stage of one run, wherever this process is (local child, Slurm job, Ray trial).

This is where a stage's own outcome becomes its status record: running on start; done with
its result; failed with the reason; pending again when it stopped on request (exit 75,
requeue me). Backends start ``execute_stage`` somewhere, and record only what the stage could
not: that it was queued, cancelled, or died without a word.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from cleftgan_hpc.context import EXIT_REQUEUE, StageContext, StopRequested
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.models import StoreConfig
from cleftgan_hpc.jobspec.stages import AnyStage
from cleftgan_hpc.plan import PlannedStage, make_plan
from cleftgan_hpc.ranks import detect
from cleftgan_hpc.runs import RunState
from cleftgan_hpc.stages import stage_function

EXIT_FAILED = 1
PARENT_PID_ENV = "CLEFTGAN_LAUNCHER_PID"  # set by the local launcher on the stage processes it starts


def scratch_root() -> Path:
    """Node-local scratch: $CLEFTGAN_SCRATCH, else Slurm's $TMPDIR, else the system temp dir."""
    root = os.environ.get("CLEFTGAN_SCRATCH") or os.environ.get("TMPDIR") or tempfile.gettempdir()
    return Path(root) / "cleftgan-hpc"


def _logger(stage: str, log_file: Path) -> logging.Logger:
    log = logging.getLogger(f"cleftgan_hpc.stage.{stage}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(log_file)):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    return log


def execute_stage(store_cfg: StoreConfig, run_id: str, stage: str, task: int | None = None) -> int:
    """Run ``stage`` of ``run_id``; returns the process exit code (0, 75 or 1).

    With ``task`` (one array task of a split stage, e.g. a Slurm array element) only that part
    runs, and its record goes to ``tasks/<task>.json``; the stage's own status belongs to the
    final call without a task (the commit), which finds the parts done and completes the stage.
    """
    from cleftgan_hpc.storage import open_store

    store = open_store(store_cfg)
    run = RunState(store, run_id)
    plan = make_plan(run.load_spec(), run_id)
    try:
        planned = plan.stage(stage)
    except KeyError:
        raise CleftGanError(f"run {run_id} has no stage {stage!r}; it has {[s.name for s in plan.stages]}") from None
    name = stage if task is None else f"{stage}.{task}"
    name += f".rank{env_rank()}" if env_rank() else ""
    scratch = scratch_root() / run_id / name
    scratch.mkdir(parents=True, exist_ok=True)
    log_file = scratch / "log.txt"
    log = _logger(name, log_file)
    wants_gpu = planned.resources.gpus > 0 or planned.config.wants_gpu
    ctx = StageContext(
        store=store,
        run_id=run_id,
        stage=stage,
        scratch=scratch,
        log=log,
        store_config=store_cfg,
        task=task,
        device="cuda" if wants_gpu and _cuda_available() else "cpu",
        cpus=_cpus(planned.resources.cpus_per_task),
    )
    ctx.install_signal_handlers()
    if os.environ.get(PARENT_PID_ENV):  # started by the local launcher: do not outlive it
        ctx.stop_when_parent_dies(int(os.environ[PARENT_PID_ENV]))
    cfg = _with_upstream_inputs(run, planned)
    if env_rank() > 0:
        if not type(cfg).task_per_gpu:  # only data-parallel stages use more tasks
            return 0
        return _run_worker(planned, cfg, ctx)  # a data-parallel worker: rank 0 keeps the records
    if task is None:
        return _run_whole(run, planned, cfg, ctx, log_file)
    return _run_task(run, planned, cfg, ctx, log_file)


def env_rank() -> int:
    """This process's data-parallel rank (0 when it is the only one)."""
    return detect().rank


@dataclass
class Outcome:
    """How a call of a stage function ended."""

    state: str  # done, pending (stopped on request: run me again) or failed
    code: int  # the process exit code: 0, 75 or 1
    error: str | None = None
    outputs: dict[str, str] | None = None


def _call(planned: PlannedStage, cfg: AnyStage, ctx: StageContext) -> Outcome:
    """Run the stage function; whatever happens, say how it ended (a bug too, with its traceback in the log)."""
    try:
        return Outcome("done", 0, outputs=stage_function(planned.kind)(cfg, ctx))
    except StopRequested as exc:
        ctx.log.warning(f"stopped on request, will resume: {exc}")
        return Outcome("pending", EXIT_REQUEUE, f"stopped on request, will resume: {exc}")
    except CleftGanError as exc:
        ctx.log.error(f"{ctx.stage} failed: {exc}")
        return Outcome("failed", EXIT_FAILED, str(exc))
    except BaseException as exc:  # noqa: BLE001 - a stage bug still gets a record
        ctx.log.error(f"{ctx.stage} crashed:\n{traceback.format_exc()}")
        return Outcome("failed", EXIT_FAILED, f"{type(exc).__name__}: {exc}")


def _run_worker(planned: PlannedStage, cfg: AnyStage, ctx: StageContext) -> int:
    return _call(planned, cfg, ctx).code  # rank 0 keeps the records


def _run_whole(run: RunState, planned: PlannedStage, cfg: AnyStage, ctx: StageContext, log_file: Path) -> int:
    stage = planned.name
    status = run.status(stage).running(planned.fingerprint, planned.work_fingerprint, os.environ.get("SLURM_JOB_ID"))
    run.set_status(stage, status)
    ctx.log.info(f"stage {stage} ({planned.kind}) attempt {status.attempt} on {status.host}, run {run.run_id}")
    outcome = _call(planned, cfg, ctx)
    if outcome.outputs is not None:
        run.set_result(stage, outcome.outputs)
        ctx.log.info(f"stage {stage} done in {time.time() - (status.started or time.time()):.1f}s")
    run.set_status(stage, status.ended(outcome.state, outcome.error))
    _upload_log(run, stage, "log.txt", ctx.log, log_file)
    return outcome.code


def _run_task(run: RunState, planned: PlannedStage, cfg: AnyStage, ctx: StageContext, log_file: Path) -> int:
    stage, task = planned.name, ctx.task
    key = run.key(stage, f"tasks/{task}.json")
    record: dict[str, object] = {
        "task": task,
        "state": "running",
        "started": time.time(),
        "host": socket.gethostname(),
        "job_id": os.environ.get("SLURM_JOB_ID"),
    }
    run.store.put_json(key, record)
    ctx.log.info(f"stage {stage} ({planned.kind}) task {task} on {record['host']}, run {run.run_id}")
    outcome = _call(planned, cfg, ctx)
    record.update(state=outcome.state, finished=time.time())
    if outcome.error:
        record["error"] = outcome.error
    run.store.put_json(key, record)
    _upload_log(run, stage, f"tasks/{task}.log.txt", ctx.log, log_file)
    return outcome.code


def _upload_log(run: RunState, stage: str, name: str, log: logging.Logger, log_file: Path) -> None:
    for handler in log.handlers:
        handler.flush()
    run.store.put_file(run.key(stage, name), log_file)


def _with_upstream_inputs(run: RunState, planned: PlannedStage) -> AnyStage:
    """The stage's config with each stage: input replaced by the store key its stage recorded."""
    cfg = planned.config
    updates = {}
    for field_name, planned_value in planned.inputs.items():
        original = getattr(cfg, field_name)
        if isinstance(original, str) and original.startswith("stage:"):
            dep, _, output = original[len("stage:") :].partition(".")
            recorded = run.result(dep) or {}
            key = recorded.get(output) if output else None  # the default output's key is the planned one
            updates[field_name] = "store:" + key if key else planned_value
    return cfg.model_copy(update=updates)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _cpus(requested: int) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(requested, available))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cleftgan_hpc.execute", description=__doc__)
    p.add_argument("--store", required=True, help="the store config as JSON")
    p.add_argument("--run", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--task", type=int, default=None, help="run one array task of a split stage")
    a = p.parse_args(argv)
    try:
        return execute_stage(StoreConfig.model_validate(json.loads(a.store)), a.run, a.stage, a.task)
    except CleftGanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

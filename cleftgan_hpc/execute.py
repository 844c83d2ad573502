"""Run one stage of one run, wherever this process is (local child, Slurm job, Ray trial).

This is the only place that turns a stage's outcome into its status record: running on
start; done with its result; failed with the reason; pending again when it stopped on
request (exit 75, requeue me). Backends just start ``execute_stage`` somewhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.plan import make_plan
from cleftgan_hpc.runs import RunState
from cleftgan_hpc.spec.models import StoreConfig
from cleftgan_hpc.stages import stage_function
from cleftgan_hpc.stages.context import EXIT_REQUEUE, StageContext, StopRequested

EXIT_FAILED = 1


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


def execute_stage(store_cfg: StoreConfig, run_id: str, stage: str) -> int:
    """Run ``stage`` of ``run_id``; returns the process exit code (0, 75 or 1)."""
    from cleftgan_hpc.storage import open_store

    store = open_store(store_cfg)
    run = RunState(store, run_id)
    spec = run.load_spec()
    plan = make_plan(spec, run_id)
    planned = plan.stage(stage)
    status = run.status(stage).running(planned.fingerprint)
    status.job_ids = status.job_ids + ([os.environ["SLURM_JOB_ID"]] if "SLURM_JOB_ID" in os.environ else [])
    run.set_status(stage, status)

    scratch = scratch_root() / run_id / stage
    scratch.mkdir(parents=True, exist_ok=True)
    log_file = scratch / "log.txt"
    log = _logger(stage, log_file)
    log.info(f"stage {stage} ({planned.kind}) attempt {status.attempt} on {status.host}, run {run_id}")

    # Inputs from upstream stages: the store keys they actually recorded.
    cfg = planned.config
    updates = {}
    for field_name, value in planned.inputs.items():
        original = getattr(cfg, field_name)
        if isinstance(original, str) and original.startswith("stage:"):
            dep, _, output = original[len("stage:") :].partition(".")
            recorded = run.result(dep) or {}
            key = recorded.get(output or type(spec.stages[dep]).default_output)
            updates[field_name] = "store:" + key if key else value
    cfg = cfg.model_copy(update=updates)

    ctx = StageContext(
        store=store,
        run_id=run_id,
        stage=stage,
        scratch=scratch,
        log=log,
        device="cuda" if planned.resources.gpus and _cuda_available() else "cpu",
        cpus=_cpus(planned.resources.cpus_per_task),
    )
    ctx.install_signal_handlers()
    code = 0
    try:
        outputs = stage_function(planned.kind)(cfg, ctx)
        run.set_result(stage, outputs)
        status.state, status.error = "done", None
        log.info(f"stage {stage} done in {time.time() - (status.started or time.time()):.1f}s")
    except StopRequested as exc:
        status.state, status.error, code = "pending", f"stopped on request, will resume: {exc}", EXIT_REQUEUE
        log.warning(status.error)
    except CleftGanError as exc:
        status.state, status.error, code = "failed", str(exc), EXIT_FAILED
        log.error(f"stage {stage} failed: {exc}")
    except BaseException as exc:  # noqa: BLE001 - a stage bug still gets a status record
        status.state, code = "failed", EXIT_FAILED
        status.error = f"{type(exc).__name__}: {exc}"
        log.error(f"stage {stage} crashed:\n{traceback.format_exc()}")
    status.finished = time.time()
    run.set_status(stage, status)
    for handler in log.handlers:
        handler.flush()
    store.put_file(run.key(stage, "log.txt"), log_file)
    return code


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
    a = p.parse_args(argv)
    try:
        return execute_stage(StoreConfig.model_validate(json.loads(a.store)), a.run, a.stage)
    except CleftGanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

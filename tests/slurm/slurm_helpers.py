"""Helpers of the Slurm tests: specs, submission, waiting on the real cluster."""

from __future__ import annotations

import argparse
import subprocess
import textwrap
import time
from pathlib import Path

from cleftgan_hpc.jobspec.load import load_spec
from cleftgan_hpc.runs import RunState, latest_run_id
from cleftgan_hpc.storage import open_store


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=60).stdout


def write_spec(tmp_path: Path, body: str, *, slurm_block: str = "", resources: str = "") -> Path:
    """A job spec with backend slurm, a store and slurm logs under tmp_path."""
    text = textwrap.dedent("""
        name: t
        store: file://./store
        backend: slurm
        resources:
          cpus_per_task: 1
          mem_gb: 0.5
          time: "00:10:00"
        {resources}
        slurm:
          log_dir: ./logs
        {slurm_block}
        stages:
        {body}
        """).format(
        resources=textwrap.indent(textwrap.dedent(resources).strip(), "  "),
        slurm_block=textwrap.indent(textwrap.dedent(slurm_block).strip(), "  "),
        body=textwrap.indent(textwrap.dedent(body).strip(), "  "),
    )
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def submit(spec: Path, *force: str) -> RunState:
    from cleftgan_hpc.launch.commands import cmd_submit

    cmd_submit(argparse.Namespace(spec=str(spec), run=None, force=list(force)))
    return open_run(spec)


def open_run(spec: Path) -> RunState:
    s = load_spec(spec).spec
    store = open_store(s.store)
    run_id = latest_run_id(store, s.name)
    assert run_id
    return RunState(store, run_id)


def job_ids(run: RunState, stage: str) -> list[str]:
    from cleftgan_hpc.launch.slurm import read_record

    return [j["id"] for j in read_record(run, stage)["jobs"]]


def wait_idle(run: RunState, stages: list[str], timeout: float = 180) -> None:
    """Until Slurm has no queued or running job of these stages."""
    ids = [i for s in stages for i in job_ids(run, s)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i").strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"jobs {ids} still queued after {timeout}s:\n{slurm('squeue')}")


def wait_state(run: RunState, stage: str, states: set[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.status(stage).state in states:
            return
        time.sleep(0.3)
    raise AssertionError(f"stage {stage} is {run.status(stage).state}, not {states}, after {timeout}s")


def sacct_state(job_id: str, settle: float = 30) -> str:
    """The job's accounting state once it has settled: slurmdbd records the end of a job a
    moment after it leaves the queue, so a just-finished job can still read PENDING/RUNNING."""
    deadline = time.monotonic() + settle
    state = "?"
    while True:
        out = slurm("sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", job_id)
        for line in out.splitlines():
            jid, st = line.split("|")[:2]
            if jid == job_id:
                state = st.split()[0]
        if state not in ("?", "PENDING", "RUNNING", "REQUEUED", "COMPLETING") or time.monotonic() > deadline:
            return state
        time.sleep(0.5)

"""The local backend end to end: real stages in their own processes, state in a real store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from waiting import wait_for

from cleftgan_hpc.runs import RunState
from cleftgan_hpc.storage.local import LocalStore

SPEC = """
name: t
store: file://./store
stages:
  faces:
    kind: demo_data
    count: 10
    size: 128
    seed: {seed}
  dataset:
    kind: preprocess
    images: stage:faces.images
    landmarks: stage:faces.landmarks
    labels: stage:faces.labels
    label_column: group
    resolution: 32
    workers: 1
"""


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cleftgan_hpc.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(SPEC.format(seed=0)))
    return path


def test_run_resume_force_and_status(job: Path) -> None:
    out = run_cli("run", str(job), "--run", "t-1", cwd=job.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "> faces (demo_data) starting" in out.stdout and "+ dataset done" in out.stdout
    assert "[dataset]" in out.stdout  # the stage's own log lines are shown live

    store = LocalStore(job.parent / "store")
    run = RunState(store, "t-1")
    for stage in ("faces", "dataset"):
        st = run.status(stage)
        assert st.state == "done" and st.attempt == 1 and st.host and st.started and st.finished >= st.started
        assert "done" in store.get_text(run.key(stage, "log.txt"))
    outputs = run.result("dataset")
    assert outputs is not None and store.exists(outputs["dataset"])
    assert run.load_spec().name == "t"

    again = run_cli("run", str(job), "--run", "t-1", cwd=job.parent)
    assert again.returncode == 0
    assert "= faces: done earlier (attempt 1), skipped" in again.stdout
    assert "= dataset: done earlier" in again.stdout
    assert run.status("dataset").attempt == 1

    forced = run_cli("run", str(job), "--run", "t-1", "--force", "faces", cwd=job.parent)
    assert forced.returncode == 0
    assert run.status("faces").attempt == 2 and run.status("dataset").attempt == 2  # downstream re-runs too

    job.write_text(textwrap.dedent(SPEC.format(seed=1)))  # a changed config re-runs what it affects
    changed = run_cli("run", str(job), "--run", "t-1", cwd=job.parent)
    assert "~ faces: its config or an upstream stage changed" in changed.stdout
    assert run.status("faces").attempt == 3

    status = run_cli("status", str(job), cwd=job.parent)
    assert status.returncode == 0
    assert "run t-1" in status.stdout
    rows = [line.split() for line in status.stdout.splitlines()[2:]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("faces", "demo_data", "done", "3"),
        ("dataset", "preprocess", "done", "3"),
    ]


def test_failed_stage_cancels_dependents(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent("""
        name: f
        stages:
          broken:
            kind: preprocess
            images: ./no-such-photos
          after:
            kind: demo_data
            needs: [broken]
    """)
    )
    out = run_cli("run", str(path), "--run", "f-1", cwd=tmp_path)
    assert out.returncode == 1
    assert "x broken failed" in out.stdout
    assert "x after: not run: upstream stage 'broken' failed" in out.stdout
    assert "resume with: cleftgan-hpc run" in out.stdout
    run = RunState(LocalStore(tmp_path / "store"), "f-1")
    st = run.status("broken")
    assert st.state == "failed" and "no-such-photos" in st.error
    assert run.status("after").state == "cancelled"
    assert "Traceback" not in out.stderr
    status = json.loads((tmp_path / "store/runs/f-1/stages/broken/status.json").read_text())
    assert status["state"] == "failed"


def test_latest_run_is_this_jobs_and_stored_specs_keep_literal_dollars(tmp_path: Path) -> None:
    from cleftgan_hpc.jobspec.job import JobSpec
    from cleftgan_hpc.jobspec.load import parse_spec
    from cleftgan_hpc.runs import latest_run_id, new_run_id

    store = LocalStore(tmp_path / "store")
    spec = parse_spec("name: dol\nstages:\n  faces: {kind: demo_data, count: 2}\n", env={}).spec
    other = parse_spec("name: dol-big\nstages:\n  faces: {kind: demo_data, count: 2}\n", env={}).spec

    def started_after(run: RunState, spec: JobSpec, previous: RunState) -> None:
        """Save the run's spec until its time stamp is later than ``previous``'s (file systems
        with coarse time stamps give two quick writes the same one)."""
        def later() -> bool:
            run.save_spec(spec)
            mine, theirs = (store.head(f"{r.prefix}/spec.yaml") for r in (run, previous))
            return bool(mine and theirs and mine.last_modified > theirs.last_modified)

        wait_for(later, 10, f"run {run.run_id}'s spec to be newer than {previous.run_id}'s")

    first = RunState(store, new_run_id("dol"))
    first.save_spec(spec)
    by_hand = RunState(store, "dol-by-hand")
    started_after(by_hand, spec, first)  # an id given by hand, started last
    started_after(RunState(store, "dol-big-29991231-235959-ffff"), other, by_hand)  # newer still, but another job
    assert latest_run_id(store, "dol") == "dol-by-hand"

    literal = parse_spec("name: lit\nstages:\n  faces:\n    kind: preprocess\n    images: /x/$${HOME}/p\n", env={}).spec
    run = RunState(store, "lit-1")
    run.save_spec(literal)
    assert run.load_spec().stages["faces"].images == "/x/${HOME}/p"  # not expanded again when read back


def test_a_run_in_progress_or_of_another_job_is_refused(tmp_path: Path) -> None:
    import os
    import socket

    from cleftgan_hpc.jobspec.load import load_spec
    from cleftgan_hpc.runs import StageStatus

    path = tmp_path / "job.yaml"
    path.write_text("name: busy\nstages:\n  faces: {kind: demo_data, count: 2, size: 64}\n")
    run = RunState(LocalStore(tmp_path / "store"), "busy-1")
    run.save_spec(load_spec(path).spec)
    run.set_status("faces", StageStatus("running", 1, host=socket.gethostname(), pid=os.getpid()))
    out = run_cli("run", str(path), "--run", "busy-1", cwd=tmp_path)
    assert out.returncode == 1 and f"is running now (pid {os.getpid()})" in out.stderr

    other = tmp_path / "other.yaml"
    other.write_text("name: other\nstages:\n  faces: {kind: demo_data, count: 2, size: 64}\n")
    out = run_cli("run", str(other), "--run", "busy-1", cwd=tmp_path)
    assert out.returncode == 1 and "belongs to job 'busy', not 'other'" in out.stderr


TRAIN = """
name: longer
store: file://./store
stages:
  train:
    kind: finetune
    network: random
    dataset: {dataset}
    random_network: {{channel_base: 256, channel_max: 16, z_dim: 16, w_dim: 16}}
    batch: 4
    kimg: {kimg}
    snapshot_kimg: 0.008
    augment: none
    seed: {seed}
    processes: {processes}
    gamma: {gamma}
"""


@pytest.mark.slow
def test_a_longer_kimg_continues_training_and_another_seed_starts_over(tmp_path: Path, tiny_dataset: Path) -> None:
    job = tmp_path / "job.yaml"
    store = LocalStore(tmp_path / "store")
    run = RunState(store, "l-1")
    job.write_text(TRAIN.format(dataset=tiny_dataset, kimg=0.016, seed=1, processes=2, gamma=1))
    first = run_cli("run", str(job), "--run", "l-1", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr

    # train further, on one process instead of two (a requeue onto fewer GPUs)
    job.write_text(TRAIN.format(dataset=tiny_dataset, kimg=0.032, seed=1, processes=1, gamma=1))
    longer = run_cli("run", str(job), "--run", "l-1", cwd=tmp_path)
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "~ train: its config changed only in settings it can continue with" in longer.stdout
    assert "resumed from step 4 (kimg 0.02)" in longer.stdout  # the stage's log, shown live
    assert run.status("train").attempt == 2

    # a setting it could continue with, but there is nothing left to train: the old weights are
    # not this config's result, and it says what to do instead
    job.write_text(TRAIN.format(dataset=tiny_dataset, kimg=0.032, seed=1, processes=1, gamma=2))
    stale = run_cli("run", str(job), "--run", "l-1", cwd=tmp_path)
    assert stale.returncode != 0 and run.status("train").state == "failed"
    assert "already trained to the end with other settings; raise kimg" in (run.status("train").error or "")

    job.write_text(TRAIN.format(dataset=tiny_dataset, kimg=0.032, seed=2, processes=1, gamma=2))  # another run
    other = run_cli("run", str(job), "--run", "l-1", cwd=tmp_path)
    assert other.returncode == 0, other.stdout + other.stderr
    assert "~ train: its config or an upstream stage changed since it ran; starting over" in other.stdout
    assert "resumed from step" not in other.stdout and run.status("train").attempt == 4


def test_every_evaluate_setting_is_a_reusable_change() -> None:
    """The evaluate stage checks its saved progress itself, so any of its settings may change."""
    from cleftgan_hpc.jobspec.kinds.evaluate import EvaluateStage

    assert EvaluateStage.reusable_changes == set(EvaluateStage.model_fields) - {"kind", "needs", "resources"}

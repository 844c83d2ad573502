"""The Slurm backend end to end on the real single-node test cluster (see conftest.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
from slurm_helpers import job_ids, sacct_state, slurm, submit, wait_idle, wait_state, write_spec
from tiny_nets import save_tiny_generator
from waiting import wait_for

from cleftgan_hpc.launch.slurm import SlurmLauncher, read_record
from cleftgan_hpc.plan import make_plan
from cleftgan_hpc.runs import RunState

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

DEMO = """
faces:
  kind: demo_data
  count: 12
  size: 96
dataset:
  kind: preprocess
  images: stage:faces.images
  landmarks: stage:faces.landmarks
  labels: stage:faces.labels
  label_column: group
  resolution: 32
"""


def describe(run: RunState, settle: float = 30) -> dict[str, str]:
    """The launcher's per-stage Slurm details once accounting has caught up: slurmdbd records a
    job's end a moment after it leaves the queue, so a finished job can still read RUNNING."""
    deadline = time.monotonic() + settle
    while True:
        plan, launcher = make_plan(run.load_spec(), run.run_id), SlurmLauncher()
        launcher.reconcile(plan, run)  # as `cleftgan-hpc status` does: jobs Slurm ended are recorded first
        detail = launcher.describe(plan, run)
        busy = any(w in d for d in detail.values() for w in ("PENDING", "RUNNING", "COMPLETING"))
        if not busy or time.monotonic() > deadline:
            return detail
        time.sleep(0.5)


def log_text(run: RunState, stage: str, job_id: str | None = None) -> str:
    folder = Path(read_record(run, stage)["folder"])
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob(f"{job_id or ''}*_log.*")))


def test_demo_runs_in_dependency_order_with_sacct_states(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = submit(write_spec(tmp_path, DEMO))
    faces_id, dataset_id = job_ids(run, "faces")[0], job_ids(run, "dataset")[0]
    script = (Path(read_record(run, "dataset")["folder"]) / f"{dataset_id}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{faces_id}" in script
    assert "#SBATCH --kill-on-invalid-dep=yes" in script
    wait_idle(run, ["faces", "dataset"])

    faces, dataset = run.status("faces"), run.status("dataset")
    assert (faces.state, dataset.state) == ("done", "done"), (faces.error, dataset.error)
    assert dataset.started >= faces.finished  # afterok: it waited for faces to finish
    assert faces_id in faces.job_ids and dataset_id in dataset.job_ids
    assert run.store.exists(run.result("dataset")["dataset"])
    detail = describe(run)
    assert detail["faces"] == f"slurm {faces_id} COMPLETED"
    assert detail["dataset"] == f"slurm {dataset_id} COMPLETED"

    from cleftgan_hpc.runs import format_status

    table = format_status(make_plan(run.load_spec(), run.run_id), run, detail)
    assert "COMPLETED" in table and "done" in table

    from cleftgan_hpc.launch.commands import cmd_logs

    capsys.readouterr()
    cmd_logs(argparse.Namespace(spec=str(tmp_path / "job.yaml"), stage="dataset", run=run.run_id, task=None))
    logs = capsys.readouterr().out
    assert f"{dataset_id}_0_log.out (stdout)" in logs and "stage dataset rank 0" in logs
    assert "(stage log in the store)" in logs and "stage dataset done" in logs

    # Submitting the same run again skips what is done.
    from cleftgan_hpc.launch.commands import cmd_submit

    capsys.readouterr()
    cmd_submit(argparse.Namespace(spec=str(tmp_path / "job.yaml"), run=run.run_id, force=[]))
    out = capsys.readouterr().out
    assert "= faces: done earlier" in out and "= dataset: done earlier" in out


def test_failing_stage_cancels_dependents(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """
        faces:
          kind: demo_data
          count: 4
          size: 64
        broken:
          kind: preprocess
          images: /nonexistent/photos
          needs: [faces]
        after:
          kind: preprocess
          images: stage:faces.images
          needs: [broken]
    """)
    run = submit(spec)
    wait_idle(run, ["faces", "broken", "after"])
    assert run.status("faces").state == "done"
    broken, after = run.status("broken"), run.status("after")
    assert broken.state == "failed" and "/nonexistent/photos" in (broken.error or "")
    assert after.state == "cancelled"
    assert "upstream stage 'broken' failed" in (after.error or "")
    assert sacct_state(job_ids(run, "broken")[0]) == "FAILED"
    assert sacct_state(job_ids(run, "after")[0]) == "CANCELLED"
    detail = describe(run)
    assert detail["broken"].startswith(f"slurm {job_ids(run, 'broken')[0]} FAILED")
    assert "upstream stage 'broken' failed" in detail["after"]


def test_cancel_stops_running_and_queued_stages(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """
        slow:
          kind: demo_data
          count: 2000
          size: 256
        later:
          kind: preprocess
          images: stage:slow.images
    """)
    run = submit(spec)
    wait_state(run, "slow", {"running"})
    from cleftgan_hpc.launch.commands import cmd_cancel

    cmd_cancel(argparse.Namespace(spec=str(spec), run=run.run_id))
    wait_idle(run, ["slow", "later"], timeout=60)
    assert run.status("slow").state == "cancelled" and run.status("later").state == "cancelled"
    assert "cancelled by the user" in (run.status("later").error or "")
    assert sacct_state(job_ids(run, "slow")[0]) == "CANCELLED"
    assert sacct_state(job_ids(run, "later")[0]) == "CANCELLED"


def test_gpu_request_gets_cuda_visible_devices(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """
        faces:
          kind: demo_data
          count: 2
          size: 64
          resources:
            gpus: 2
    """)
    run = submit(spec)
    wait_idle(run, ["faces"])
    assert run.status("faces").state == "done", run.status("faces").error
    assert "GPUs 0,1" in log_text(run, "faces")  # StageJob prints CUDA_VISIBLE_DEVICES
    jid = job_ids(run, "faces")[0]
    # slurmdbd records the allocation a moment after the job ends: wait for accounting to catch up
    tres = wait_for(lambda: slurm("sacct", "-n", "-P", "-X", "-o", "AllocTRES", "-j", jid).strip(), 60,
                    f"sacct's AllocTRES of job {jid}", interval=0.5)
    assert "gres/gpu=2" in tres


FINETUNE = """
train:
  kind: finetune
  network: random
  dataset: {dataset}
  random_network: {{channel_base: 256, channel_max: 16, z_dim: 16, w_dim: 16}}
  batch: 4
  kimg: 0.06
  snapshot_kimg: 0.008
  augment: none
  seed: 3
"""


def preempted_and_uninterrupted(tmp_path: Path, body: str, stage: str, saved: str) -> tuple[RunState, RunState, str]:
    """Run a one-stage job to the end (the reference), then again with a high-priority job
    preempting the stage once something exists under ``saved`` in its prefix. Both must end
    done. Returns (reference, preempted run, the preempted run's Slurm log)."""
    (tmp_path / "ref").mkdir()
    reference = submit(write_spec(tmp_path / "ref", body))
    wait_idle(reference, [stage], timeout=300)
    assert reference.status(stage).state == "done", reference.status(stage).error

    run = submit(write_spec(tmp_path, body))
    deadline = time.monotonic() + 120
    while not list(run.store.list(run.key(stage, saved))):
        assert time.monotonic() < deadline, log_text(run, stage)[-3000:]
        time.sleep(0.2)
    high = slurm("sbatch", "--parsable", "-p", "high", "-c", "8", "--mem=1G", "-o", "/dev/null", "--wrap", "sleep 1").strip()
    wait_idle(run, [stage], timeout=300)
    assert sacct_state(high) == "COMPLETED"
    text = log_text(run, stage)
    assert run.status(stage).state == "done", (run.status(stage).error, text[-3000:])
    return reference, run, text


def test_preempted_finetune_resumes_and_matches_an_uninterrupted_run(tmp_path: Path, tiny_dataset: Path) -> None:
    from safetensors.torch import load

    reference, run, text = preempted_and_uninterrupted(tmp_path, FINETUNE.format(dataset=tiny_dataset), "train",
                                                       "checkpoints/")  # once the first checkpoint is written
    st = run.status("train")
    assert st.attempt == 2 and "restart 1" in text and "resumed from step" in text

    def weights(r: RunState) -> dict:
        return load(r.store.get_bytes(r.result("train")["network"]))

    expected, got = weights(reference), weights(run)
    assert expected.keys() == got.keys()
    assert [k for k in expected if not expected[k].equal(got[k])] == []  # bit for bit


def test_finetune_runs_one_task_per_gpu(tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cleftgan_hpc.jobspec.stages import FinetuneStage

    # The contract (launch/slurm.py): a stage class with task_per_gpu gets one srun task per GPU.
    monkeypatch.setattr(FinetuneStage, "task_per_gpu", True, raising=False)
    body = FINETUNE.format(dataset=tiny_dataset).replace("kimg: 0.06", "kimg: 0.016") + """
  processes: 2
  resources: {gpus: 2, cpus_per_task: 1}
"""
    run = submit(write_spec(tmp_path, body))
    jid = job_ids(run, "train")[0]
    assert "#SBATCH --ntasks-per-node=2" in (Path(read_record(run, "train")["folder"]) / f"{jid}_submission.sh").read_text()
    wait_idle(run, ["train"], timeout=300)
    st = run.status("train")
    text = log_text(run, "train")
    assert st.state == "done", (st.error, text[-3000:])
    assert "rank 0, slurm job" in text and "rank 1, slurm job" in text
    # slurmdbd records the allocation a moment after the job ends: wait for accounting to catch up
    tres = wait_for(lambda: slurm("sacct", "-n", "-P", "-X", "-o", "AllocTRES", "-j", jid).strip(), 60,
                    f"sacct's AllocTRES of job {jid}", interval=0.5)
    assert "gres/gpu=2" in tres


def test_time_limit_requeues_the_stage(tmp_path: Path) -> None:
    # One minute with the checkpoint signal 55 s before the end: Slurm sends SIGUSR2 a few
    # seconds in; the stage stops (exit 75) and submitit requeues it. It cannot finish in a
    # minute, so the test cancels it after seeing the second attempt start.
    spec = write_spec(tmp_path, """
        slow:
          kind: demo_data
          count: 2000
          size: 256
          resources:
            time: "00:01:00"
    """, slurm_block="signal_delay_s: 55\nmax_requeues: 1")
    run = submit(spec)
    jid = job_ids(run, "slow")[0]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.status("slow").attempt < 2:
        time.sleep(1)
    text = log_text(run, "slow")
    slurm("scancel", jid)
    assert run.status("slow").attempt >= 2, text[-3000:]
    assert "timed-out" in text and "Requeued job" in text  # submitit's USR2 handler
    assert "restart 1" in text


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random 16x16 generator saved as our network file (what a finetune would produce)."""
    return save_tiny_generator(tmp_path_factory.mktemp("net") / "tiny.safetensors")


def test_array_synthesis_splits_at_max_array_size_with_parallelism_2(
    tmp_path: Path, tiny_generator: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = write_spec(tmp_path, f"""
        synth:
          kind: synthesize
          network: {tiny_generator}
          count: 20
          shard_size: 2
          batch: 2
          workers: 0
          dataset: toy
          tasks: 10
    """, slurm_block="array_parallelism: 2")
    run = submit(spec)
    record = read_record(run, "synth")
    kinds = [(j["kind"], j.get("tasks")) for j in record["jobs"]]
    assert kinds == [("array", "0-7"), ("array", "8-9"), ("commit", None)]  # the test cluster's MaxArraySize=8
    first, second, commit = (j["id"] for j in record["jobs"])
    folder = Path(record["folder"])
    assert "#SBATCH --array=0-7%2" in (folder / f"{first}_submission.sh").read_text()
    assert f"--dependency=afterok:{first}" in (folder / f"{second}_submission.sh").read_text()
    assert f"--dependency=afterok:{first}:{second}" in (folder / f"{commit}_submission.sh").read_text()
    wait_idle(run, ["synth"], timeout=300)
    st = run.status("synth")
    assert st.state == "done", (st.error, log_text(run, "synth")[-3000:])
    text = log_text(run, "synth")
    for i in range(10):
        assert f"task {i}/10" in text
    # every task must have reached accounting, not only left the queue
    def both_recorded() -> str | None:
        d = describe(run)["synth"]
        return d if f"{second} 2 COMPLETED" in d else None

    detail = wait_for(both_recorded, 60, "sacct to record both tasks of the second array chunk", interval=0.5)
    assert f"{first} 8 COMPLETED" in detail and f"{second} 2 COMPLETED" in detail
    assert f"commit {commit} COMPLETED" in detail
    # At most two tasks at once: no instant has three running (sacct start/end, 1 s resolution).
    rows = slurm("sacct", "-n", "-P", "-X", "-o", "JobID,Start,End", "-j", f"{first},{second}").splitlines()
    spans = [(r.split("|")[1], r.split("|")[2]) for r in rows if "_" in r.split("|")[0]]
    assert len(spans) == 10
    for start, _ in spans:
        assert sum(1 for s2, e2 in spans if s2 <= start < e2) <= 2
    from cleftgan_hpc.launch.commands import cmd_logs

    cmd_logs(argparse.Namespace(spec=str(spec), stage="synth", run=run.run_id, task=9))
    assert "task 9/10" in capsys.readouterr().out  # task 9 is task 1 of the second array job
    shards = [i.key for i in run.store.list("datasets/toy/") if i.key.endswith(".tar")]
    assert len(shards) == 10 and run.store.exists("datasets/toy/manifest.json")


def test_hostile_values_are_data_not_commands(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    weird = tmp_path / f"logs $(touch {canary}1); touch {canary}2 `touch {canary}3` x"
    spec = write_spec(tmp_path, """
        faces:
          kind: demo_data
          count: 2
          size: 64
    """, slurm_block=f"""
        log_dir: "{weird}"
        setup:
          - "echo $(touch {canary}4); touch {canary}5 && touch {canary}6 | cat > {canary}7"
          - "echo `touch {canary}8` $SLURM_JOB_ID"
        env:
          EVIL: "$(touch {canary}9); x"
    """)
    spec.write_text(spec.read_text().replace("  log_dir: ./logs\n", ""))
    run = submit(spec)
    wait_idle(run, ["faces"])
    assert run.status("faces").state == "done", run.status("faces").error
    assert not list(tmp_path.glob("pwned*"))
    jid = job_ids(run, "faces")[0]
    out = log_text(run, "faces")
    assert f"$(touch {canary}4); touch {canary}5 && touch {canary}6 | cat > {canary}7" in out  # echoed literally
    assert f"`touch {canary}8` {jid}" in out  # $NAME expands, nothing else does
    assert Path(read_record(run, "faces")["folder"]).parent.parent == weird


EVALUATE = """
judge:
  kind: evaluate
  network: {network}
  dataset: {dataset}
  metrics: [kid, ppl, dish]
  num_images: 1500
  batch: 8
  feature_extractor: demo
  lpips: demo
  severity_model: demo
  ppl: {{samples: 300}}
  kid_subset_size: 12
  save_every_s: 0.2
"""


def test_preempted_evaluation_resumes_and_matches_an_uninterrupted_run(tmp_path: Path, tiny_dataset: Path) -> None:
    import json

    network = save_tiny_generator(tmp_path / "g.safetensors", resolution=32, seed=4)
    body = EVALUATE.format(network=network, dataset=tiny_dataset)
    reference, run, text = preempted_and_uninterrupted(tmp_path, body, "judge", "progress/")  # once some is saved
    st = run.status("judge")
    assert st.attempt == 2 and "resuming:" in text

    def record(r: RunState) -> dict:
        return json.loads(r.store.get_bytes(r.result("judge")["metrics"]))

    assert record(run)["resumed"] is True and record(reference)["resumed"] is False
    assert record(run)["metrics"] == record(reference)["metrics"]  # exactly the same numbers

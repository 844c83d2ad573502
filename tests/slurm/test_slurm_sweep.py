"""A Ray Tune sweep as one Slurm job: the job starts a Ray cluster on its node, Tune keeps its
state in the real S3 server (the run's store), and Ray is gone when the job ends."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from slurm_helpers import submit, wait_idle

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def test_sweep_runs_in_one_slurm_job_with_tune_state_on_s3(
    tmp_path: Path, tiny_dataset: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: sws
        store: {{url: "s3://{s3_bucket}/slurm-sweep-{tmp_path.name}", endpoint_url: "{s3_endpoint}"}}
        backend: slurm
        resources: {{cpus_per_task: 2, mem_gb: 6, time: "00:20:00"}}
        slurm: {{log_dir: ./logs}}
        stages:
          tune:
            kind: sweep
            network: random
            dataset: {tiny_dataset}
            feature_extractor: demo
            base:
              random_network: {{channel_base: 256, channel_max: 16, z_dim: 16, w_dim: 16}}
              batch: 4
              snapshot_kimg: 0.008
              metric_samples: 16
              grid_seeds: 4
            space:
              ada_target: {{choice: [0.5, 0.7]}}
              glr: {{loguniform: [0.001, 0.004]}}
            num_samples: 4
            grace_period_kimg: 0.008
            kimg_per_trial: 0.024
            trial_resources: {{cpus: 1}}
    """))
    run = submit(spec)
    wait_idle(run, ["tune"], timeout=900)
    st = run.status("tune")
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*") if p.is_file())
    assert st.state == "done", (st.error, logs[-4000:])
    assert "Ray cluster at" in logs and "joining the Ray cluster" in run.store.get_text(run.key("tune", "log.txt"))
    results = json.loads(run.store.get_text(run.key("tune", "results.json")))
    assert len(results["trials"]) == 4
    tune_state = [i.key for i in run.store.list(run.key("tune", "tune/sweep/"))]
    assert any("experiment_state" in k for k in tune_state), "Tune's state is in the S3 store"
    assert run.store.exists(run.key("tune", "network.safetensors"))
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [p for p in procs.splitlines() if "raylet" in p and "<defunct>" not in p], "Ray outlived the job"

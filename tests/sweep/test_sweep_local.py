"""A real Ray Tune sweep on the local backend: ASHA stops trials, results are written, the best
trial's network is promoted, and a killed sweep resumes from Tune's state in the store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from waiting import wait_for

SPEC = """
name: sw
stages:
  tune:
    kind: sweep
    network: random
    dataset: {dataset}
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
    metric: kid
    grace_period_kimg: 0.008
    reduction_factor: 2
    kimg_per_trial: {kimg}
    trial_resources: {{cpus: 1}}
"""


def write_spec(tmp_path: Path, dataset: Path, kimg: float) -> Path:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC.format(dataset=dataset, kimg=kimg))
    return spec


def cli(spec: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cleftgan_hpc.cli", "run", str(spec), *args],
        cwd=spec.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def no_ray_left() -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return not any(("raylet" in line or "gcs_server" in line) and "<defunct>" not in line for line in out.splitlines())


@pytest.mark.slow
def test_asha_sweep_writes_results_and_promotes_the_best(tiny_dataset: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, tiny_dataset, 0.032)
    # One trial at a time: with seeded sampling and CPU-exact training the whole sweep, and so
    # which trials ASHA stops, is the same on every run.
    spec.write_text(spec.read_text().replace("    num_samples: 4\n", "    num_samples: 4\n    max_concurrent: 1\n"))
    out = cli(spec, "--run", "sw-1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    stage = tmp_path / "store/runs/sw-1/stages/tune"
    results = json.loads((stage / "results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 4
    assert {t["status"] for t in trials} <= {"finished", "stopped early"}
    assert any(t["status"] == "stopped early" for t in trials), "ASHA stopped no trial"
    assert any(t["status"] == "finished" for t in trials)
    assert all({"ada_target", "glr"} <= set(t["config"]) for t in trials)
    best = results["best"]
    all_kids = [h["kid"] for t in trials for h in t["history"]]
    assert best["kid"] == min(all_kids)
    header = (stage / "results.csv").read_text().splitlines()[0]
    assert header.startswith("trial,status,ada_target,glr,kimg,kid,best_kid")
    assert (stage / "metric_vs_kimg.png").read_bytes()[:4] == b"\x89PNG"
    from cleftgan_hpc.model import load_network

    net = load_network(stage / "network.safetensors")
    assert net.G_ema is not None and net.G_ema.img_resolution == 32
    assert no_ray_left(), "Ray processes are still running after the sweep"


@pytest.mark.slow
def test_killed_sweep_resumes_from_tune_state(tiny_dataset: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, tiny_dataset, 0.024)
    cmd = [sys.executable, "-m", "cleftgan_hpc.cli", "run", str(spec), "--run", "sw-2"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 600
    for line in proc.stdout:  # wait until Tune has results (and state) in the store, then kill everything
        if "checkpoint_key" in line or time.monotonic() > deadline:
            break
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # a full pipe must not stall the run
    state_dir = tmp_path / "store/runs/sw-2/stages/tune/tune/sweep"
    wait_for(lambda: state_dir.is_dir() and any(p.name.startswith("experiment_state") for p in state_dir.iterdir()),
             120, f"Tune's experiment state in {state_dir}")
    # The machine is lost: the launcher and the stage (its own session, with Ray) die at once.
    stage_pid = json.loads((tmp_path / "store/runs/sw-2/stages/tune/status.json").read_text())["pid"]
    for group in (stage_pid, proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the stage's process is gone
        try:
            os.kill(stage_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    assert any(p.name.startswith("experiment_state") for p in state_dir.iterdir())
    again = cli(spec, "--run", "sw-2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming the sweep from" in again.stdout
    results = json.loads((tmp_path / "store/runs/sw-2/stages/tune/results.json").read_text())
    assert len(results["trials"]) == 4


@pytest.mark.slow
def test_pbt_clones_restore_from_other_trials_checkpoints(tiny_dataset: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, tiny_dataset, 0.032)
    text = spec.read_text().replace("    num_samples: 4\n", "    num_samples: 2\n    scheduler: pbt\n    perturbation_kimg: 0.008\n")
    text = text.replace("      ada_target: {choice: [0.5, 0.7]}\n", "      ada_target: {uniform: [0.4, 0.8]}\n")
    text = text.replace("    grace_period_kimg: 0.008\n", "")
    spec.write_text(text)
    out = cli(spec, "--run", "pbt-1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "store/runs/pbt-1/stages/tune/results.json").read_text())
    assert len(results["trials"]) == 2
    assert all(t["status"] == "finished" for t in results["trials"])  # PBT stops nothing
    import re

    cloned = []
    for log in (tmp_path / "store/runs/pbt-1/stages/tune/trials").glob("*/log.txt"):
        own = log.parent.name
        cloned += [src for src in re.findall(r"resumed from step \d+ .*?\(runs/.*?/trials/([^/]+)/", log.read_text())
                   if src != own]
    assert cloned, "no trial started from another trial's checkpoint (PBT exploit)"
    assert (tmp_path / "store/runs/pbt-1/stages/tune/network.safetensors").exists()

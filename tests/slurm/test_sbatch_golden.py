"""The job scripts, byte for byte, against golden files in tests/slurm/golden/ (as submitit tests its own).

A change to a script shows up here as a diff to review. When the change is intended, regenerate
the golden files and commit them with it:

    CLEFTGAN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/slurm/test_sbatch_golden.py

The specs use fixed absolute paths (store, log_dir, python, image), so the plain scripts need no
placeholders. The submitit script needs its log folder to exist, so it lives under tmp_path and is
written as <LOG_DIR> in the golden file; that file also changes when submitit's own template does
(regenerate after reading the diff when upgrading submitit).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from cleftgan_hpc.jobspec.job import JobSpec
from cleftgan_hpc.jobspec.load import parse_spec
from cleftgan_hpc.launch.sbatch import render_script

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CLEFTGAN_UPDATE_GOLDEN") == "1"
PYTHON = "/opt/venv/bin/python"  # the submitting Python (sys.executable in real use)

CPU_STAGE = """
    name: golden
    backend: slurm
    store: file:///srv/cleftgan/store
    resources: {cpus_per_task: 2, mem_gb: 8, time: "01:00:00"}
    slurm:
      log_dir: /srv/cleftgan/slurm-logs
      partition: cpu
      setup: ["module load python/3.11"]
      env: {HF_HOME: /srv/cache}
    stages:
      faces: {kind: demo_data, count: 16, size: 64}
"""

GPU_FINETUNE = """
    name: golden
    backend: slurm
    store: {url: "s3://cleftgan-data/runs", endpoint_url: "https://s3.example.org", region: eu-west-1}
    resources: {cpus_per_task: 8, mem_gb: 128, time: "2-00:00:00", partition: gpu}
    slurm:
      log_dir: LOG_DIR
      python: /opt/venv/bin/python
      setup: ["module load cuda/12.1"]
      env: {NCCL_DEBUG: WARN}
    stages:
      train:
        kind: finetune
        network: /project/models/stylegan3-t-ffhq-1024x1024.pkl
        dataset: /project/cleft/dataset.zip
        kimg: 460
        batch: 32
        gpus: 4
        resources: {gpus: 4, constraint: a100|h100, sbatch: {exclusive: true}}
"""

ARRAY_APPTAINER = """
    name: golden
    backend: slurm
    store: file:///srv/cleftgan/store
    resources: {cpus_per_task: 8, mem_gb: 32, time: "04:00:00", partition: gpu}
    slurm:
      log_dir: /srv/cleftgan/slurm-logs
      account: cleft-lab
      array_parallelism: 4
      setup: ["module load cuda/12.1"]
      container: {runtime: apptainer, image: /srv/containers/cleftgan.sif, binds: ["/project:/project"]}
    stages:
      samples:
        kind: synthesize
        network: /project/models/network.safetensors
        count: 10000
        shard_size: 500
        dataset: synthetic-v1
        tasks: 10
        resources: {gpus: 1, mem_gb: 16.5}
"""

CASES = {
    # golden file: (spec, run id, stage)
    "cpu_stage.sbatch": (CPU_STAGE, "golden-1", "faces"),
    "gpu_finetune_data_parallel.sbatch": (GPU_FINETUNE, "golden-2", "train"),
    "array_apptainer.sbatch": (ARRAY_APPTAINER, "golden-3", "samples"),
}


def spec_of(text: str, log_dir: str = "/srv/cleftgan/slurm-logs") -> JobSpec:
    return parse_spec(textwrap.dedent(text).replace("LOG_DIR", log_dir), env={}).spec


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(text.encode())
    assert path.exists(), f"no golden file {path}; create it with CLEFTGAN_UPDATE_GOLDEN=1 (see this module's docstring)"
    expected = path.read_bytes().decode()
    assert text == expected, (
        f"the script differs from {path.relative_to(GOLDEN.parents[2])}; if the change is intended, "
        "regenerate with CLEFTGAN_UPDATE_GOLDEN=1 and review the diff"
    )


@pytest.mark.parametrize("name", list(CASES))
def test_rendered_sbatch_script_matches_its_golden_file(name: str) -> None:
    text, run_id, stage = CASES[name]
    script = render_script(spec_of(text), run_id, stage, PYTHON)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # and it is a valid script
    check_golden(name, script)


@pytest.mark.skipif(shutil.which("srun") is None, reason="submitit's SlurmExecutor needs srun on PATH")
def test_submitit_sbatch_script_matches_its_golden_file(tmp_path: Path) -> None:
    """The script submitit writes for a data-parallel finetune stage (launch/slurm.py's executor)."""
    from cleftgan_hpc.launch.slurm import SlurmLauncher
    from cleftgan_hpc.plan import make_plan
    from cleftgan_hpc.runs import RunState
    from cleftgan_hpc.storage.local import LocalStore

    log_dir = tmp_path / "logs"
    plan = make_plan(spec_of(GPU_FINETUNE, str(log_dir)), "golden-2")
    run = RunState(LocalStore(tmp_path / "store"), "golden-2")
    ex = SlurmLauncher(python=PYTHON)._executor(plan, run, plan.stage("train"))
    ex.update_parameters(dependency="afterok:101:102")  # as _submit_stage sets it after upstream stages
    script = ex._make_submission_file_text(ex._submitit_command_str, "uid")
    resolved = str(plan.spec.slurm.log_dir)  # as the spec reader resolved it
    check_golden("submitit_gpu_finetune_data_parallel.sbatch", script.replace(resolved, "<LOG_DIR>"))

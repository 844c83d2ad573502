"""The synthesize stage in a job: array tasks then the commit through execute_stage, the local
backend end to end, and the standalone command's Slurm array environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SPEC = """
name: synth
store: file://./store
resources:
  cpus_per_task: 1
stages:
  synth:
    kind: synthesize
    network: {net}
    count: 9
    shard_size: 2
    batch: 2
    tasks: 3
    dataset: {dataset}
    workers: 0
"""


def _spec(tmp_path: Path, net: Path, dataset: str = "faces") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(SPEC.format(net=net, dataset=dataset))
    return path


def test_array_tasks_then_commit(tmp_path: Path, tiny_net: Path, monkeypatch: Any) -> None:
    from cleftgan_hpc.execute import execute_stage
    from cleftgan_hpc.jobspec.load import load_spec
    from cleftgan_hpc.runs import RunState
    from cleftgan_hpc.storage import open_store

    monkeypatch.setenv("CLEFTGAN_SCRATCH", str(tmp_path / "scratch"))
    spec = load_spec(_spec(tmp_path, tiny_net)).spec
    assert spec.stages["synth"].array_tasks() == 3
    store = open_store(spec.store)
    run = RunState(store, "synth-1")
    run.save_spec(spec)
    for task in (1, 0, 2):
        assert execute_stage(spec.store, "synth-1", "synth", task=task) == 0
        assert store.get_json(run.key("synth", f"tasks/{task}.json"))["state"] == "done"
    assert sum(1 for _ in store.list("datasets/faces/shard-")) == 5
    assert not store.exists("datasets/faces/manifest.json")
    assert execute_stage(spec.store, "synth-1", "synth") == 0
    outputs = run.result("synth")
    assert outputs == {"manifest": "runs/synth-1/stages/synth/manifest.json"}
    assert store.get_json(outputs["manifest"]) == store.get_json("datasets/faces/manifest.json")
    assert store.get_json(outputs["manifest"])["count"] == 9


@pytest.mark.slow
def test_local_backend_end_to_end(tmp_path: Path, tiny_net: Path) -> None:
    spec = _spec(tmp_path, tiny_net, "local")
    proc = subprocess.run([sys.executable, "-m", "cleftgan_hpc.cli", "run", str(spec)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "store" / "datasets" / "local" / "manifest.json").is_file()


def test_standalone_command_in_a_slurm_array(tmp_path: Path, tiny_net: Path, monkeypatch: Any,
                                             capsys: Any) -> None:
    from cleftgan_hpc.storage.local import LocalStore
    from cleftgan_hpc.synthesis.commands import main

    args = ["synthesize", "--network", str(tiny_net), "--store", f"file://{tmp_path / 'store'}", "--dataset", "arr",
            "--count", "8", "--shard-size", "2", "--batch", "2", "--workers", "0", "--scratch", str(tmp_path / "s")]
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert main(args) == 0
    assert "task 1/2 done" in capsys.readouterr().out
    store = LocalStore(tmp_path / "store")
    assert sorted(i.key for i in store.list("datasets/arr/shard-")) == [
        "datasets/arr/shard-000002.tar", "datasets/arr/shard-000003.tar"]
    assert main([*args, "--task-index", "5"]) == 1
    assert "task index 5 is out of range 0..1" in capsys.readouterr().err
    assert main([*args, "--commit"]) == 0
    assert "committed" in capsys.readouterr().out
    assert main([*args, "--commit", "--psi", "0.5"]) == 1
    assert "other options (truncation_psi: 1.0 there, 0.5 here)" in capsys.readouterr().err
    assert main([*args, "--commit", "--psi", "0.5", "--overwrite"]) == 0
    assert store.get_json("datasets/arr/manifest.json")["options"]["truncation_psi"] == 0.5
    assert main([*args, "--commit", "--quality", "50"]) == 1
    assert "quality is for jpeg and webp" in capsys.readouterr().err

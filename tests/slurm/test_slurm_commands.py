"""render, doctor and the argument wiring of the batch commands (no cluster needed)."""

from __future__ import annotations

import argparse
import subprocess
import textwrap
from pathlib import Path

import pytest

from cleftgan_hpc.errors import LaunchError
from cleftgan_hpc.launch.commands import add_commands, cmd_doctor, cmd_render, cmd_submit


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers(dest="command", required=True))
    return p


def spec(tmp_path: Path, backend: str = "slurm") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(f"""
        name: demo
        backend: {backend}
        stages:
          faces: {{kind: demo_data, count: 2}}
        """))
    return path


def test_commands_parse() -> None:
    p = parser()
    assert p.parse_args(["submit", "j.yaml", "--run", "r1"]).func is cmd_submit
    a = p.parse_args(["logs", "j.yaml", "faces", "--task", "3"])
    assert (a.stage, a.task) == ("faces", 3)
    assert p.parse_args(["render", "j.yaml", "--stage", "faces"]).func is cmd_render
    assert p.parse_args(["doctor"]).func is cmd_doctor


def test_render_creates_the_run_and_prints_a_script(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = spec(tmp_path)
    assert cmd_render(parser().parse_args(["render", str(path), "--stage", "faces", "--run", "demo-r1"])) == 0
    out = capsys.readouterr()
    assert out.out.startswith("#!/bin/bash\n") and "--run demo-r1 --stage faces" in out.out
    subprocess.run(["bash", "-n"], input=out.out, text=True, check=True)
    assert (tmp_path / "store" / "runs" / "demo-r1" / "spec.yaml").exists()
    assert (tmp_path / "slurm-logs" / "demo-r1" / "faces").is_dir()


def test_submit_refuses_a_local_spec(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="backend: slurm"):
        cmd_submit(parser().parse_args(["submit", str(spec(tmp_path, "local"))]))


def test_submit_refuses_another_jobs_run_id_and_leaves_its_spec(tmp_path: Path) -> None:
    """`submit --run ID` (and `run` on a Slurm spec) must not overwrite another job's run, as the
    local backend already refused; the refusal comes before anything is queued or written."""
    from cleftgan_hpc.cli import main
    from cleftgan_hpc.errors import CleftGanError

    path = spec(tmp_path)
    assert cmd_render(parser().parse_args(["render", str(path), "--stage", "faces", "--run", "shared-r1"])) == 0
    stored = tmp_path / "store" / "runs" / "shared-r1" / "spec.yaml"
    before = stored.read_bytes()
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text().replace("name: demo", "name: other"))
    with pytest.raises(CleftGanError, match="belongs to job 'demo', not 'other'"):
        cmd_submit(parser().parse_args(["submit", str(other), "--run", "shared-r1"]))
    assert main(["run", str(other), "--run", "shared-r1"]) == 1
    assert stored.read_bytes() == before


def test_doctor_checks_the_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cmd_doctor(parser().parse_args(["doctor", "--store", f"file://{tmp_path}/st"]))
    out = capsys.readouterr().out
    assert "[  ok] torch" in out and "store" in out and "writable" in out
    for op in ("filtered_lrelu", "modulated_conv2d", "upfirdn2d", "bias_act"):  # which path each op runs, and why
        assert f"] op         {op}: " in out
    assert "kernels" in out  # compiled, or the loud FALLBACK line
    assert code == 0
    code = cmd_doctor(parser().parse_args(["doctor", "--store", "file:///proc/nope", "--gpus", "0"]))
    assert code == 1 and "[FAIL] store" in capsys.readouterr().out


def test_status_off_the_cluster_falls_back_to_the_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cleftgan_hpc.jobspec.load import load_spec
    from cleftgan_hpc.launch.slurm import RECORD, SlurmLauncher
    from cleftgan_hpc.plan import make_plan
    from cleftgan_hpc.runs import RunState
    from cleftgan_hpc.storage import open_store

    s = load_spec(spec(tmp_path)).spec
    run = RunState(open_store(s.store), "demo-r1")
    run.save_spec(s)
    run.store.put_json(run.key("faces", RECORD), {"jobs": [{"id": "5", "kind": "job"}], "folder": str(tmp_path)})
    monkeypatch.setenv("PATH", str(tmp_path))  # no sacct here
    detail = SlurmLauncher().describe(make_plan(s, run.run_id), run)
    assert detail["faces"].startswith("(no Slurm state: sacct not found")

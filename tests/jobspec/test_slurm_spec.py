"""The Slurm parts of the spec: backend slurm, the slurm block, the new resources fields, and
positioned errors for each."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cleftgan_hpc.errors import SpecError
from cleftgan_hpc.jobspec.load import load_spec

BASE = """
name: demo
backend: slurm
resources:
  gpus: 0
  time: "02:00:00"
  partition: gpu
slurm:
{slurm}
stages:
  faces:
    kind: demo_data
    count: 8
{stage_extra}
"""


def write(tmp_path: Path, slurm: str = "  {}", stage_extra: str = "") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(BASE).format(slurm=slurm, stage_extra=stage_extra).lstrip("\n"))
    return path


def problems(tmp_path: Path, slurm: str = "  {}", stage_extra: str = "") -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, slurm, stage_extra), env={})
    return [str(p) for p in info.value.problems]


def test_slurm_block_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path), env={}).spec
    assert spec.backend == "slurm"
    assert spec.slurm.container is None and spec.slurm.setup == [] and spec.slurm.array_parallelism == 16
    assert spec.slurm.log_dir == tmp_path / "slurm-logs"  # relative to the spec's directory
    assert spec.resources.partition == "gpu" and spec.resources.nodes == 1


def test_full_slurm_block(tmp_path: Path) -> None:
    slurm = """
  partition: batch
  account: proj42
  qos: normal
  container:
    runtime: apptainer
    image: /images/cleftgan.sif
    binds: [/data, "/scratch:/scratch:rw"]
  setup:
    - module load cuda/12.1
    - export PATH=/opt/x/bin:$$PATH
  env: {NCCL_DEBUG: WARN}
  array_parallelism: 4
  max_array_size: 1000
  signal_delay_s: 300
  max_requeues: 5
  log_dir: logs/slurm
"""
    extra = """
    resources:
      gpus: 4
      nodes: 2
      constraint: "a100|h100"
      exclude: "gpu[01-03]"
      sbatch: {mail-type: END, exclusive: true}
"""
    spec = load_spec(write(tmp_path, slurm, extra), env={}).spec
    s = spec.slurm
    assert s.container and s.container.runtime == "apptainer" and s.container.nv
    assert s.container.binds == ["/data", "/scratch:/scratch:rw"]
    assert s.setup == ["module load cuda/12.1", "export PATH=/opt/x/bin:$PATH"]  # $$ is a literal $
    assert s.log_dir == tmp_path / "logs" / "slurm"
    res = spec.resources_of("faces")
    # A stage's resources replace the job's field by field: the job's partition and time stay.
    assert (res.gpus, res.nodes, res.partition, res.time) == (4, 2, "gpu", "02:00:00")
    assert res.sbatch == {"mail-type": "END", "exclusive": True}
    assert res.time_minutes() == 120


def test_pyxis_container(tmp_path: Path) -> None:
    slurm = """
  container: {runtime: pyxis, image: "nvcr.io#nvidia/pytorch:24.05-py3", mounts: ["/data:/data"], workdir: /work}
"""
    c = load_spec(write(tmp_path, slurm), env={}).spec.slurm.container
    assert c and c.runtime == "pyxis" and c.mounts == ["/data:/data"]


def test_unknown_slurm_field_suggests(tmp_path: Path) -> None:
    out = problems(tmp_path, "  array_paralelism: 4")
    assert len(out) == 1
    assert ":8:3: slurm.array_paralelism: unknown field 'array_paralelism'; did you mean 'array_parallelism'?" in out[0]


def test_container_runtime_and_fields_checked(tmp_path: Path) -> None:
    out = problems(tmp_path, "  container: {runtime: docker, image: x}")
    assert ":8:24: slurm.container.runtime: Input should be 'apptainer' or 'pyxis' (got 'docker')" in out[0]
    out = problems(tmp_path, "  container: {runtime: pyxis, image: x, binds: [/data]}")
    assert "slurm.container: binds are for runtime: apptainer; pyxis uses mounts" in out[0]
    out = problems(tmp_path, "  container: {runtime: apptainer}")
    assert ":8:3: slurm.container.image: missing required field 'image' (Apptainer: a .sif path" in out[0]


def test_newline_in_setup_line_is_refused(tmp_path: Path) -> None:
    out = problems(tmp_path, '  setup: ["module load x\\ntouch /tmp/pwned"]')
    assert ":8:11: slurm.setup.0: setup line" in out[0] and "control character" in out[0]


def test_unbalanced_quote_in_setup_line(tmp_path: Path) -> None:
    out = problems(tmp_path, "  setup: [\"echo 'unclosed\"]")
    assert "slurm.setup.0: cannot split setup line" in out[0]


def test_bad_names_and_options(tmp_path: Path) -> None:
    out = problems(tmp_path, "  partition: 'gpu; rm -rf /'")
    assert ":8:14: slurm.partition: bad Slurm name" in out[0]
    out = problems(tmp_path, stage_extra="    resources: {sbatch: {'--bad': 1}}")
    assert "stages.faces.resources.sbatch: bad sbatch option '--bad'" in out[0]
    out = problems(tmp_path, stage_extra="    resources: {sbatch: {dependency: 'afterok:1'}}")
    assert "sbatch option 'dependency' is set by cleftgan-hpc" in out[0]
    out = problems(tmp_path, stage_extra="    resources: {nodes: 0}")
    assert "stages.faces.resources.nodes: Input should be greater than or equal to 1" in out[0]
    out = problems(tmp_path, "  env: {'1BAD': x}")
    assert "slurm.env: bad environment variable name '1BAD'" in out[0]


def test_out_of_range(tmp_path: Path) -> None:
    out = problems(tmp_path, "  array_parallelism: 0\n  signal_delay_s: 5")
    assert any(":8:22: slurm.array_parallelism: Input should be greater than or equal to 1" in p for p in out)
    assert any(":9:19: slurm.signal_delay_s: Input should be greater than or equal to 10" in p for p in out)


def test_local_backend_still_default(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\nstages:\n  faces: {kind: demo_data}\n")
    spec = load_spec(path, env={}).spec
    assert spec.backend == "local" and spec.resources_of("faces") == spec.resources

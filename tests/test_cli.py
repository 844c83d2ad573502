"""The command line: validate/plan on good and bad specs, as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cleftgan_hpc.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def test_validate_shipped_jobs() -> None:
    for job in ("jobs/demo.yaml", "jobs/cleftgan.yaml", "jobs/paper.yaml", "jobs/paper-small.yaml"):
        out = cli("validate", job)
        assert out.returncode == 0, out.stderr
        assert f"{job}: ok" in out.stdout
    paper = cli("validate", "jobs/paper.yaml").stdout  # the paper's table: 2 architectures x 4 augmentations x 3 sizes
    assert paper.count("train[") == paper.count("score[") == 24 and "table" in paper and "tune" in paper
    assert paper.count("train[stylegan2,") == paper.count("train[stylegan3-t,") == 12  # the baseline, in one table


def test_validate_bad_spec_prints_positions_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nstages:\n  a:\n    kind: demo_data\n    cuont: 3\n  b:\n    kind: preprocess\n    images: stage:c\n"
    )
    out = cli("validate", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert f"{bad}:5:5: stages.a.cuont: unknown field 'cuont'; did you mean 'count'?" in lines
    assert f"{bad}:8:13: stages.b.images: unknown stage 'c'; stages are: a, b" in lines
    assert lines[-1] == f"2 problems in {bad}"


def test_validate_and_plan_do_not_import_torch() -> None:
    code = (
        "import sys; from cleftgan_hpc.cli import main; "
        "assert main(['validate', 'jobs/cleftgan.yaml']) == 0; assert main(['plan', 'jobs/demo.yaml']) == 0; "
        "heavy = [m for m in ('torch', 'ray', 'submitit', 'boto3') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_plan_lists_stages_in_order_with_outputs() -> None:
    out = cli("plan", "jobs/demo.yaml", "--run", "r1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.index("1. faces (demo_data)") < text.index("2. dataset (preprocess)  after faces")
    assert "in  images         store:runs/r1/stages/faces/images" in text
    assert "out dataset        runs/r1/stages/dataset/dataset.zip" in text


def test_schema_documents_every_field() -> None:
    from cleftgan_hpc.jobspec.kinds.evaluate import DISHOptions, PPLOptions
    from cleftgan_hpc.jobspec.models import ContainerConfig, Resources, SlurmConfig, StoreConfig
    from cleftgan_hpc.jobspec.stages import KINDS

    out = cli("schema")
    assert out.returncode == 0
    for model in (StoreConfig, Resources, SlurmConfig, ContainerConfig, PPLOptions, DISHOptions, *KINDS.values()):
        for name, info in model.model_fields.items():
            assert f"`{name}`" in out.stdout
            assert info.description or name == "kind", f"{model.__name__}.{name} has no description"


def test_docs_spec_reference_is_current() -> None:
    from cleftgan_hpc.jobspec.reference import REFERENCE_PAGE, spec_reference

    assert spec_reference() in (REPO / REFERENCE_PAGE).read_text(), "regenerate with: make reference"

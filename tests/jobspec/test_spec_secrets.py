"""Spec errors never echo credentials or huge values; secrets for the jobs stay out of what is stored."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cleftgan_hpc.errors import SpecError
from cleftgan_hpc.jobspec.load import MAX_SPEC_BYTES, load_spec, parse_spec
from cleftgan_hpc.launch.sbatch import render_script

SECRET = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def spec_text(extra_stage: str = "", slurm: str = "") -> str:
    return textwrap.dedent("""
        name: demo
        backend: slurm
        slurm:
        {slurm}
        stages:
          faces:
            kind: demo_data
        {extra}
        """).format(slurm=textwrap.indent(textwrap.dedent(slurm).strip(), "  ") or "  {}",
                    extra=textwrap.indent(textwrap.dedent(extra_stage).strip(), "    "))


def errors(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, file="job.yaml", env=env or {})
    return str(info.value)


def test_credential_in_a_mistyped_field_is_not_echoed() -> None:
    message = errors(spec_text(f"count: {SECRET}"))
    assert "job.yaml:" in message and "stages.faces.count" in message  # still says where
    assert SECRET not in message and "AKIA" not in message


def test_value_from_the_environment_is_not_echoed() -> None:
    message = errors(spec_text("count: ${MY_COUNT}"), env={"MY_COUNT": "hunter2-not-a-number"})
    assert "stages.faces.count" in message
    assert "hunter2" not in message


def test_bad_slurm_env_value_is_not_echoed() -> None:
    message = errors(spec_text(slurm='env: {DB_PASSWORD: "pa55\\u0007word"}'))
    assert "slurm.env" in message
    assert "pa55" not in message


def test_huge_scalar_is_cut_short() -> None:
    big = "x" * 500_000
    message = errors(spec_text(f"count: {big}"))
    assert "stages.faces.count" in message
    assert len(message) < 1000, len(message)


def test_huge_spec_is_refused_quickly_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(spec_text() + "# " + "y" * (50 << 20) + "\n")
    t0 = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec(path, env={})
    assert time.monotonic() - t0 < 2
    assert f"{MAX_SPEC_BYTES:,}" in str(info.value) and "job.yaml:1:1" in str(info.value)
    with pytest.raises(SpecError):
        parse_spec("a" * (MAX_SPEC_BYTES + 1))


def test_credential_in_slurm_env_is_read_by_the_job_not_stored(tmp_path: Path) -> None:
    env = {"AWS_SECRET_ACCESS_KEY": SECRET_KEY, "TAG": "plain"}
    text = spec_text(slurm='env: {AWS_SECRET_ACCESS_KEY: "${AWS_SECRET_ACCESS_KEY}", RUN_TAG: "${TAG}"}')
    loaded = parse_spec(text, file="job.yaml", env=env)
    assert [w.field for w in loaded.warnings] == ["slurm.env.AWS_SECRET_ACCESS_KEY"]
    spec = loaded.spec
    assert spec.slurm.env == {"AWS_SECRET_ACCESS_KEY": "${AWS_SECRET_ACCESS_KEY}", "RUN_TAG": "plain"}
    script = render_script(spec, "demo-1", "faces", "/usr/bin/python3")
    assert SECRET_KEY not in script
    assert "export RUN_TAG=plain" in script
    # the job expands it from its own environment, where sbatch put it
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export "))
    out = subprocess.run(["bash", "-c", exports + '\nprintf %s "$AWS_SECRET_ACCESS_KEY"'], capture_output=True,
                         text=True, env={"AWS_SECRET_ACCESS_KEY": SECRET_KEY, "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout == SECRET_KEY


def test_literal_credential_in_slurm_env_warns_at_validate(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(spec_text(slurm=f'env: {{AWS_ACCESS_KEY_ID: "{SECRET}"}}'))
    out = subprocess.run([sys.executable, "-m", "cleftgan_hpc.cli", "validate", str(path)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "warning:" in out.stderr and "slurm.env.AWS_ACCESS_KEY_ID" in out.stderr and "${AWS_ACCESS_KEY_ID}" in out.stderr
    assert SECRET not in out.stderr + out.stdout


@pytest.mark.parametrize("time_limit", ["99999999-00:00:00", "366-00:00:00", "1-24:00:00", "9000:00:00"])
def test_absurd_time_limits_are_refused(time_limit: str) -> None:
    message = errors(spec_text(f"resources: {{time: '{time_limit}'}}"))
    assert "stages.faces.resources.time" in message


@pytest.mark.parametrize("time_limit", ["04:00:00", "2-00:00:00", "48:00:00", "365-00:00:00", "7-23:59:59"])
def test_usual_time_limits_are_accepted(time_limit: str) -> None:
    parse_spec(spec_text(f"resources: {{time: '{time_limit}'}}"), env={})

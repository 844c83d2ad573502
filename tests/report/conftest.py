"""Fixtures of the report tests: a real headless Chromium (installed here when missing, as root, like
the Slurm test cluster), and one real run of a small job, stopped mid-training and resumed.

Chromium comes from Debian's packages (``apt-get install chromium``); elsewhere, without root, the
browser tests skip and say why. The page is driven over the DevTools protocol (tests/report/browser.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from browser import Browser  # noqa: E402
from report_helpers import JOB, DemoRun, cli, install_chromium  # noqa: E402


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    pytest.importorskip("websockets", reason="the dev extra installs websockets (the DevTools protocol client)")
    with Browser(install_chromium()) as b:
        yield b


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The small job run for real: a report while train runs, SIGTERM (the launcher writes the
    report of the interrupted run), then resumed to the end (the report at the run's end)."""
    root = tmp_path_factory.mktemp("report-run")
    (root / "job.yaml").write_text(JOB)
    proc = subprocess.Popen([sys.executable, "-m", "cleftgan_hpc.cli", "run", "job.yaml", "--run", "rep-1"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    samples = root / "store/runs/rep-1/stages/train/samples"
    deadline = time.monotonic() + 300
    while not (samples.is_dir() and any(samples.glob("grid-*.png"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never wrote a sample grid:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.1)
    midway = root / "midway.html"
    out = cli("report", "job.yaml", "--run", "rep-1", "--out", str(midway), cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    os.kill(proc.pid, signal.SIGTERM)  # the launcher stops the stage at a safe point, as on Ctrl-C
    stopped_output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, stopped_output
    stopped = (root / "store/runs/rep-1/report.html").read_text()
    resumed = cli("run", "job.yaml", "--run", "rep-1", cwd=root)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return DemoRun(root, midway, stopped, stopped_output, resumed.stdout)

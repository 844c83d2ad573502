"""The report with bad input: outputs missing, damaged or unreadable, records damaged, a spec that
cannot be read, a run that does not exist, a store that cannot be written. The page still renders
(in the browser, without errors) and says what it could not show; the command line says one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from browser import Browser
from report_helpers import DemoRun, cli, load, stage_states

from cleftgan_hpc.runs import RunState
from cleftgan_hpc.storage.local import LocalStore

pytestmark = pytest.mark.slow


@pytest.fixture
def copy(demo_run: DemoRun, tmp_path: Path) -> Path:
    """A copy of the finished demo run's job and store, to damage."""
    shutil.copy(demo_run.root / "job.yaml", tmp_path / "job.yaml")
    shutil.copytree(demo_run.root / "store", tmp_path / "store", symlinks=True)
    return tmp_path


def test_missing_damaged_and_unreadable_outputs_are_named(copy: Path, browser: Browser) -> None:
    stages = copy / "store/runs/rep-1/stages"
    (stages / "train/curves.png").unlink()  # missing
    (stages / "evaluate/metrics.json").write_text("{not json")  # damaged
    sheet = stages / "dataset/contact_sheet.png"
    sheet.write_bytes(sheet.read_bytes()[: sheet.stat().st_size // 2])  # a truncated PNG
    with open(stages / "train/stats.jsonl", "a") as f:
        f.write("half a line\n")
    (stages / "samples/status.json").write_text("[")  # a damaged record
    report_png = stages / "evaluate/report.png"  # unreadable: the file store refuses to follow a link
    report_png.rename(copy / "elsewhere.png")
    os.symlink(copy / "elsewhere.png", report_png)
    run = RunState(LocalStore(copy / "store"), "rep-1")
    run.set_status("faces", run.status("faces").failed('<img src="x" onerror="console.error(1)"> & more'))

    out = cli("report", "job.yaml", "--run", "rep-1", cwd=copy)
    assert out.returncode == 0, out.stderr
    page = load(browser, copy / "store/runs/rep-1/report.html")  # no console error, every image there
    text = page.text
    assert "runs/rep-1/stages/train/curves.png: missing" in text
    assert "runs/rep-1/stages/evaluate/metrics.json: damaged: not JSON" in text
    assert "runs/rep-1/stages/dataset/contact_sheet.png: damaged: not a readable image" in text
    assert "runs/rep-1/stages/train/stats.jsonl: damaged: 1 line(s) are not JSON records" in text
    assert "runs/rep-1/stages/evaluate/report.png: unreadable:" in text and "symbolic link" in text
    assert "status record:" in text and stage_states(text)["samples"] == "unknown"
    # the rest is still there; markup in a record is shown as text, never run
    assert "Sample grids over training" in text and "the first 16 images" in text
    assert '<img src="x" onerror="console.error(1)"> & more' in text
    assert not any(i["alt"] == "" or i["alt"].endswith("report.png") for i in page.images)


def test_a_spec_that_cannot_be_read(copy: Path, browser: Browser) -> None:
    (copy / "store/runs/rep-1/spec.yaml").write_text("name: [unclosed\n")
    out = cli("report", "--store", str(copy / "store"), "--run", "rep-1", "--out", str(copy / "r.html"), cwd=copy)
    assert out.returncode == 0, out.stderr
    page = load(browser, copy / "r.html")
    assert "spec.yaml) could not be read" in page.text
    assert stage_states(page.text) == {s: "done" for s in ("dataset", "evaluate", "faces", "samples", "severity",
                                                           "train")}


def test_command_line_errors_are_one_line(copy: Path) -> None:
    def one_line_error(out: object, *parts: str) -> None:
        assert out.returncode == 1, out.stdout  # type: ignore[attr-defined]
        err = out.stderr.strip()  # type: ignore[attr-defined]
        assert err.count("\n") == 0 and err.startswith("error: ") and "Traceback" not in err, err
        for part in parts:
            assert part in err, err

    one_line_error(cli("report", "job.yaml", "--run", "nope", cwd=copy), "no run 'nope' in file://")
    one_line_error(cli("report", cwd=copy), "name the job spec")
    one_line_error(cli("report", "--store", str(copy / "absent"), "--run", "rep-1", cwd=copy), "no store at")
    assert not (copy / "absent").exists()  # looking did not create a store
    one_line_error(cli("report", "--store", str(copy / "store"), "--run", "nope", cwd=copy), "no run 'nope'")
    # a store the report cannot be written into: the command says so; `status` still prints its table
    target = copy / "store/runs/rep-1/report.html"
    target.unlink()
    target.mkdir()
    (target / "x").write_text("in the way")
    one_line_error(cli("report", "job.yaml", cwd=copy), "cannot write the report into the store", "--out FILE")
    status = cli("status", "job.yaml", cwd=copy)
    assert status.returncode == 0 and "evaluate" in status.stdout
    assert "warning: the run's report was not written" in status.stderr
    ok = cli("report", "job.yaml", "--out", str(copy / "here.html"), cwd=copy)
    assert ok.returncode == 0 and (copy / "here.html").read_text().startswith("<!DOCTYPE html>")


def test_status_refreshes_the_report(copy: Path) -> None:
    report = copy / "store/runs/rep-1/report.html"
    report.unlink()
    status = cli("status", "job.yaml", cwd=copy)
    assert status.returncode == 0 and "report.html" not in status.stdout  # stdout is the table alone
    assert f"the run's report: {report.as_uri()}" in status.stderr and report.is_file()
    assert cli("status", "job.yaml", "--no-report", cwd=copy).stderr == ""

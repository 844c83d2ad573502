"""The run report of a real run, loaded in a real headless Chromium: while a stage runs, after an
interrupt, at the run's end, and for a failed run. Each load: no console error, no exception, no
request but the page's own data: URIs, and every image decoded (naturalWidth > 0)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from urllib.parse import unquote

import pytest
from browser import Browser
from report_helpers import DemoRun, Links, cli, load, stage_states

pytestmark = pytest.mark.slow


def test_report_at_the_end_of_a_run(demo_run: DemoRun, browser: Browser) -> None:
    assert f"the run's report: {demo_run.report.as_uri()}" in demo_run.output
    page = load(browser, demo_run.report)
    assert stage_states(page.text) == {s: "done" for s in ("faces", "dataset", "train", "samples", "evaluate",
                                                           "severity")}
    for part in ("16 toy faces drawn", "Contact sheet", "Rejected photos (0)", "Training curves",
                 "Sample grids over training (3 snapshots", "ADA: augmentation probability p", "Metrics",
                 "lowest kid", "TensorBoard", "2 event file(s)", "40 PNG", "2 (", "the first 16 images of shard-000000.tar",
                 "Provenance", "severity histograms (DISH) and path lengths (PPL)", "100 subsets of 16",
                 "agreement with severity", "over 16 images", "Highest and lowest scores"):
        assert part in page.text, part
    # the grids over kimg, the contact sheet, the curves, the dataset's samples, evaluate's figure
    alts = [i["alt"] for i in page.images]
    assert sum("/samples/grid-" in a for a in alts) == 3
    assert any(a.endswith("contact_sheet.png") for a in alts) and any(a.endswith("curves.png") for a in alts)
    assert any(a.endswith("evaluate/report.png") for a in alts) and any("shard-000000.tar" in a for a in alts)
    assert any(a.endswith("severity/summary.png") for a in alts) and any(a.endswith("agreement.png") for a in alts)
    assert sum("/severity/heatmaps/" in a for a in alts) == 4  # the 2 highest and 2 lowest, not the samples
    # every link leads to something in the store beside the page (the logs among them)
    parser = Links()
    parser.feed(demo_run.report.read_text())
    assert sum(h.endswith("/log.txt") for h in parser.hrefs) >= 10  # stage table and sections
    missing = [h for h in parser.hrefs if not (demo_run.report.parent / unquote(h)).exists()]
    assert missing == []
    assert "not shown, because" not in page.text.lower()  # nothing missing in a complete run


def test_report_while_running_and_after_an_interrupt(demo_run: DemoRun, browser: Browser) -> None:
    midway = load(browser, demo_run.midway)
    states = stage_states(midway.text)
    assert states["faces"] == states["dataset"] == "done" and states["train"] == "running"
    assert states["samples"] == states["evaluate"] == "pending"
    assert "running (attempt 1): not done" in midway.text and "not run yet" in midway.text
    assert "Sample grids over training" in midway.text  # what training has written so far
    assert "Not shown, because" not in midway.text  # outputs not written yet are not "missing"

    assert "the run's report:" in demo_run.stopped_output and "interrupted" in demo_run.stopped_output
    stopped = tmp_page(demo_run.root, "stopped.html", demo_run.stopped)
    page = load(browser, stopped)
    assert stage_states(page.text)["train"] == "pending" and "stopped on request, will resume" in page.text


def tmp_page(root: Path, name: str, text: str) -> Path:
    path = root / "store" / "runs" / "rep-1" / name  # beside the real one, so its relative links work too
    path.write_text(text)
    return path


def test_report_of_a_failed_run(tmp_path: Path, browser: Browser) -> None:
    (tmp_path / "job.yaml").write_text(textwrap.dedent("""
        name: f
        stages:
          faces:
            kind: demo_data
            count: 4
            size: 128
          broken:
            kind: preprocess
            images: ./no-such-photos
            needs: [faces]
          after:
            kind: demo_data
            needs: [broken]
    """))
    out = cli("run", "job.yaml", "--run", "f-1", cwd=tmp_path)
    assert out.returncode == 1 and "the run's report: " in out.stdout
    report = tmp_path / "store/runs/f-1/report.html"
    page = load(browser, report)
    assert stage_states(page.text) == {"faces": "done", "broken": "failed", "after": "cancelled"}
    assert page.title == "f-1: failed"
    assert "no-such-photos" in page.text  # the error
    assert "The log's last" in page.text and "broken failed:" in page.text  # the log's tail
    assert "not run: upstream stage 'broken' failed" in page.text

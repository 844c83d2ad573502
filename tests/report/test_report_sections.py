"""Report sections not covered by the demo job's run: a sweep (finished and in progress) and a run
whose store is S3 (the real SeaweedFS server the harness starts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser import Browser
from report_helpers import cli, load, stage_states

from cleftgan_hpc.jobspec.load import load_spec
from cleftgan_hpc.runs import RunState, StageStatus
from cleftgan_hpc.storage.local import LocalStore

SWEEP = """
name: sw
stages:
  tune:
    kind: sweep
    network: random
    dataset: {dataset}
    feature_extractor: demo
    base:
      random_network: {{channel_base: 256, channel_max: 16, z_dim: 16, w_dim: 16}}
      batch: 4
      snapshot_kimg: 0.008
      metric_samples: 16
    space:
      ada_target: {{choice: [0.5, 0.7]}}
    num_samples: 2
    metric: kid
    kimg_per_trial: 0.016
    grace_period_kimg: 0.008
"""


def test_sweep_trials_table_and_plot(tiny_dataset: Path, tmp_path: Path, browser: Browser) -> None:
    """The sweep's records as the stage writes them (results.json from Tune's results, the plot from
    the stage's own plot_png), without running Ray: the report reads only these."""
    from cleftgan_hpc.stages.sweep import plot_png, results_csv

    (tmp_path / "sweep.yaml").write_text(SWEEP.format(dataset=tiny_dataset))
    spec = load_spec(tmp_path / "sweep.yaml").spec
    run = RunState(LocalStore(tmp_path / "store"), "sw-1")
    run.save_spec(spec)
    run.set_status("tune", StageStatus().running("f", "w"))
    run.store.put_bytes(run.key("tune", "trials/t_00001/stats.jsonl"), b"{}\n")
    run.store.put_bytes(run.key("tune", "trials/t_00000/stats.jsonl"), b"{}\n")
    out = cli("report", "sweep.yaml", "--out", str(tmp_path / "running.html"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    running = (tmp_path / "running.html").read_text()
    assert "2 trial(s) started so far: t_00000, t_00001" in running

    def history(*kids: float) -> list[dict]:
        return [{"kimg": 0.008 * (i + 1), "kid": k, "checkpoint_key": f"ck-{i}"} for i, k in enumerate(kids)]

    results = {"metric": "kid", "trials": [
        {"trial": "t_00000", "config": {"ada_target": 0.5}, "status": "finished", "history": history(0.3, 0.2)},
        {"trial": "t_00001", "config": {"ada_target": 0.7}, "status": "stopped early", "history": history(0.4)},
    ]}
    results["best"] = {"trial": "t_00000", "config": {"ada_target": 0.5}, **results["trials"][0]["history"][1]}
    outputs = {"results_json": "results.json", "results_csv": "results.csv", "plot": "metric_vs_kimg.png"}
    run.store.put_text(run.key("tune", outputs["results_json"]), json.dumps(results))
    run.store.put_text(run.key("tune", outputs["results_csv"]), results_csv(results))
    run.store.put_bytes(run.key("tune", outputs["plot"]), plot_png(results))
    run.set_result("tune", {k: run.key("tune", v) for k, v in outputs.items()})
    run.set_status("tune", run.status("tune").ended("done"))
    assert cli("report", "sweep.yaml", cwd=tmp_path).returncode == 0
    page = load(browser, tmp_path / "store/runs/sw-1/report.html")
    assert stage_states(page.text) == {"tune": "done"}
    assert "Trials (2), by kid (lower is better)" in page.text
    assert "t_00000 (best)\tfinished\t0.5\t0.016\t0.2\t0.2" in page.text
    assert "t_00001\tstopped early\t0.7\t0.008\t0.4\t0.4" in page.text
    assert "promoted: trial t_00000 at kimg 0.016 with kid 0.2" in page.text
    assert [i["alt"] for i in page.images] == ["runs/sw-1/stages/tune/metric_vs_kimg.png"]


@pytest.mark.s3
@pytest.mark.slow
def test_a_run_in_an_s3_store(tmp_path: Path, s3_endpoint: str, s3_bucket: str, browser: Browser) -> None:
    from cleftgan_hpc.storage.s3 import S3Store

    prefix = f"report-{tmp_path.name}"
    (tmp_path / "job.yaml").write_text(f"""
name: s3rep
store: {{url: "s3://{s3_bucket}/{prefix}", endpoint_url: "{s3_endpoint}"}}
stages:
  faces:
    kind: demo_data
    count: 6
    size: 128
  dataset:
    kind: preprocess
    images: stage:faces.images
    landmarks: stage:faces.landmarks
    resolution: 32
    workers: 1
""")
    out = cli("run", "job.yaml", "--run", "s3-1", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"the run's report: s3://{s3_bucket}/{prefix}/runs/s3-1/report.html" in out.stdout
    html = S3Store(s3_bucket, prefix, endpoint_url=s3_endpoint).get_text("runs/s3-1/report.html")
    page_path = tmp_path / "report.html"
    page_path.write_text(html)
    page = load(browser, page_path)
    assert stage_states(page.text) == {"faces": "done", "dataset": "done"}
    assert "Contact sheet" in page.text and "6 toy faces drawn" in page.text
    assert any(i["alt"].endswith("contact_sheet.png") for i in page.images)

"""Issue 12's targets for the shipped normal-face network (models/demo-normal-64.safetensors):
scored as jobs/demo.yaml's severity stage scores, on 36 demo faces the network never saw, the
index ranks the faces by their drawn severity (Spearman >= 0.8) and puts the heat map's peak of
complete clefts in the lip region (>= 90%). tools/check_demo_network.py does the measuring."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from cleftgan_hpc.data.demo_faces import make_demo_data

REPO = Path(__file__).resolve().parents[2]
NETWORK = REPO / "models" / "demo-normal-64.safetensors"


def test_shipped_normal_network_meets_the_demo_targets() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "check_demo_network.py"), str(NETWORK)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    out = run.stdout + run.stderr
    rho_line = re.search(r"Spearman with the drawn severity: (-?[\d.]+)", out)
    peak_line = re.search(r"complete clefts peaking in the lip region: (\d+) of (\d+)", out)
    assert rho_line and peak_line, out
    rho = float(rho_line.group(1))
    inside, total = map(int, peak_line.groups())
    assert total >= 10, out  # enough complete clefts among the 36 faces for the share to mean something
    assert rho >= 0.8, out
    assert inside / total >= 0.9, out
    assert run.returncode == 0, out


def _fake_scored_run(run: Path, count: int, peak_outside: int | None) -> None:
    """A demo run's saved outputs as the check reads them: real faces (the faces stage's drawing),
    a dataset report naming them, and a scores.csv whose score is the drawn severity and whose peak
    lies at the lip (at the forehead for face ``peak_outside``)."""
    faces = make_demo_data(run / "stages" / "faces", count, seed=0, size=128)
    with open(faces.labels, newline="") as f:
        labels = list(csv.DictReader(f))
    accepted = [{"dataset_name": f"00000/img{i:08d}.png", "file": r["file"]} for i, r in enumerate(labels)]
    (run / "stages" / "dataset").mkdir(parents=True)
    (run / "stages" / "dataset" / "report.json").write_text(json.dumps({"accepted": accepted}))
    (run / "stages" / "severity").mkdir(parents=True)
    with open(run / "stages" / "severity" / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "key", "score", "projection_loss", "adaptation_loss", "peak_row", "peak_col"])
        for i, (a, r) in enumerate(zip(accepted, labels, strict=True)):
            row, col = (0.15, 0.5) if i == peak_outside else (0.66, 0.5)  # aligned faces: lip / forehead
            w.writerow([i, a["dataset_name"], r["severity"], 0, 0, row, col])


def test_check_reads_a_demo_runs_own_scores(tmp_path: Path) -> None:
    def check(run: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(REPO / "tools" / "check_demo_network.py"), "--run", str(run)],
                              capture_output=True, text=True, timeout=120)

    _fake_scored_run(tmp_path / "good", 12, None)
    good = check(tmp_path / "good")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Spearman with the drawn severity: 1.000" in good.stdout
    total = int(re.search(r"lip region: (\d+) of (\d+)", good.stdout).group(2))
    assert total >= 2 and f"{total} of {total} (100%" in good.stdout

    with open(tmp_path / "good" / "stages" / "faces" / "labels.csv", newline="") as f:
        first_complete = next(i for i, r in enumerate(csv.DictReader(f)) if r["group"] == "2")
    _fake_scored_run(tmp_path / "miss", 12, first_complete)
    miss = check(tmp_path / "miss")
    assert miss.returncode == 1, miss.stdout + miss.stderr
    assert f"{total - 1} of {total}" in miss.stdout

    empty = check(tmp_path / "nothing")
    assert empty.returncode == 2 and "not a finished demo run" in empty.stderr

    report = tmp_path / "miss" / "stages" / "dataset" / "report.json"
    report.write_text(json.dumps({"accepted": json.loads(report.read_text())["accepted"][1:]}))
    unknown = check(tmp_path / "miss")  # a scored image the dataset's report does not name
    assert unknown.returncode == 2 and "is not among the images" in unknown.stderr, unknown.stderr
    assert "Traceback" not in unknown.stderr

"""Check a normal-face network against issue 12's demo targets (`make demo-network` runs it last).

Scores demo faces it has never seen (seed 5; the demo draws seed 0, the network learnt seed 1000)
with the severity index as jobs/demo.yaml's severity stage configures it (its ``index:``
options, read from the file; ``--index`` JSON replaces them), and prints:

- the Spearman correlation of the scores with the drawn severity (target >= 0.8);
- the share of complete clefts whose heat-map peak lies in the lip region (target >= 90%), a
  box from the aligned landmarks around the mouth and the philtrum up to the nostrils.

``--run DIR`` checks a finished ``make demo`` run instead (``store/runs/<run-id>``): the scores
and heat-map peaks its ``severity`` stage saved for the demo's own faces, against the severities
its ``faces`` stage drew, so the README's figures for the demo can be reproduced from the run.

Exit status 0 when both targets are met, 1 when not.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from pydantic import ValidationError

from cleftgan_hpc.data.align import align_face, standardise_background
from cleftgan_hpc.data.demo_faces import draw_face, face_rng, severity_group
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.kinds.severity import SeverityIndexOptions
from cleftgan_hpc.jobspec.load import load_spec
from cleftgan_hpc.severity.agreement import spearman
from cleftgan_hpc.severity.scorer import SeverityIndex

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 64
DEMO_JOB = ROOT / "jobs" / "demo.yaml"
SPEARMAN_TARGET, LIP_PEAK_TARGET = 0.8, 0.9


def lip_box(lm: np.ndarray) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in pixels from aligned landmarks (eyes, then mouth corners)."""
    eye_y, mouth_y = lm[:2, 1].mean(), lm[2:, 1].mean()
    d = mouth_y - eye_y
    return lm[2, 0] - 0.1 * d, mouth_y - 0.5 * d, lm[3, 0] + 0.1 * d, mouth_y + 0.15 * d


def demo_index_options() -> SeverityIndexOptions:
    """The ``index:`` options of jobs/demo.yaml's severity stage, as the spec loader validates them:
    the check scores as the demo does."""
    return load_spec(DEMO_JOB).spec.stages["severity"].index


def report(scores: np.ndarray, drawn: np.ndarray, peaks: np.ndarray, boxes: list, what: str) -> int:
    """Print the two targets for ``scores`` [N] and heat-map ``peaks`` [N, 2] (row, column fractions)
    against the ``drawn`` severities [N] and lip ``boxes``; 0 when both are met, 1 when not."""
    rho = spearman(scores, drawn)
    inside = [x0 <= col * RESOLUTION <= x1 and y0 <= row * RESOLUTION <= y1
              for s, (row, col), (x0, y0, x1, y1) in zip(drawn, peaks, boxes, strict=True)
              if severity_group(s) == 2]
    share = float(np.mean(inside)) if inside else 0.0
    groups = np.array([severity_group(s) for s in drawn])
    print(f"{what}; mean score by group (none, incomplete, complete): "
          f"{', '.join(f'{scores[groups == g].mean():.4g}' for g in range(3))}")
    print(f"Spearman with the drawn severity: {rho:.3f} (target >= {SPEARMAN_TARGET})")
    print(f"complete clefts peaking in the lip region: {sum(inside)} of {len(inside)} ({share:.0%}; target >= "
          f"{LIP_PEAK_TARGET:.0%})")
    return 0 if rho >= SPEARMAN_TARGET and share >= LIP_PEAK_TARGET else 1


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def check_run(run: Path) -> int:
    """The targets on a finished demo run's own faces, from what its stages saved."""
    stages = run / "stages"
    needed = [stages / "severity" / "scores.csv", stages / "dataset" / "report.json",
              stages / "faces" / "labels.csv", stages / "faces" / "landmarks.csv"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise CleftGanError(f"{run} is not a finished demo run (local store): missing {', '.join(missing)}")
    sources = {a["dataset_name"]: a["file"] for a in json.loads(needed[1].read_text())["accepted"]}
    severity = {r["file"]: float(r["severity"]) for r in _csv_rows(needed[2])}
    landmarks = {r["file"]: np.array([float(v) for k, v in r.items() if k != "file"]).reshape(4, 2)
                 for r in _csv_rows(needed[3])}
    scores, drawn, peaks, boxes = [], [], [], []
    for row in _csv_rows(needed[0]):
        file = sources.get(row["key"])
        if file is None:
            raise CleftGanError(f"{needed[0]}: {row['key']} is not among the images {needed[1]} accepted")
        with Image.open(stages / "faces" / "images" / file) as im:
            _, lm = align_face(ImageOps.exif_transpose(im).convert("RGB"), landmarks[file], RESOLUTION)
        scores.append(float(row["score"]))
        drawn.append(severity[file])
        peaks.append((float(row["peak_row"]), float(row["peak_col"])))
        boxes.append(lip_box(lm))
    return report(np.array(scores), np.array(drawn), np.array(peaks), boxes,
                  f"{len(scores)} faces of {run.name} (its severity stage's scores)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("network", type=Path, nargs="?", default=ROOT / "models" / "demo-normal-64.safetensors")
    p.add_argument("--faces", type=int, default=36)
    p.add_argument("--index", type=json.loads, default=None, help="the index's options as JSON "
                   "(default: those of jobs/demo.yaml's severity stage)")
    p.add_argument("--run", type=Path, default=None, help="check a finished demo run's own faces instead "
                   "(store/runs/<run-id>)")
    a = p.parse_args(argv)
    if a.run is not None:
        try:
            return check_run(a.run)
        except KeyError as exc:
            print(f"check_demo_network: {a.run}: a saved file lacks the field {exc}", file=sys.stderr)
            return 2
        except (CleftGanError, ValueError) as exc:
            print(f"check_demo_network: {exc}", file=sys.stderr)
            return 2
    try:
        options = SeverityIndexOptions.model_validate(a.index) if a.index is not None else demo_index_options()
        index = SeverityIndex.from_file(a.network, options, "cpu")
    except (CleftGanError, ValidationError) as exc:
        print(f"check_demo_network: {exc}", file=sys.stderr)
        return 2

    images, severity, boxes = [], [], []
    for i in range(a.faces):
        face = draw_face(face_rng(5, i), 128)
        aligned, lm = align_face(face.image, face.landmarks, RESOLUTION)
        images.append(np.asarray(standardise_background(aligned, lm, "blur", blur_radius=2)))
        severity.append(face.severity)
        boxes.append(lip_box(lm))
    t0 = time.monotonic()
    result = index.score(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())
    seconds = time.monotonic() - t0
    return report(np.asarray(result.scores), np.array(severity), np.asarray(result.peaks), boxes,
                  f"{a.faces} faces scored in {seconds:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())

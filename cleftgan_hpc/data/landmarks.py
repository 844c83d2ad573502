"""Five-point landmarks (eye centres, mouth corners) from a CSV, or from a face detector.

The detector is dlib's HOG frontal-face detector plus its 68-point shape predictor, the pair
FFHQ itself was aligned with, so detector-aligned photos match the pretrained model's crops.
Everything ships inside pip packages (no download at run time): ``dlib-bin`` (the compiled
library, HOG detector built in) and ``face-recognition-models`` (the predictor file). It is an
optional extra (``pip install 'cleftgan-hpc[detect]'``), imported only when a photo has no
landmarks in the CSV.

CSV columns: ``file,left_eye_x,left_eye_y,right_eye_x,right_eye_y,mouth_left_x,mouth_left_y,
mouth_right_x,mouth_right_y`` in pixels of the stored (EXIF-upright) photo; "left" is the
image's left. ``file`` is the path relative to the images folder (or just the file name when
that is unique).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cleftgan_hpc.data.images import Rejected
from cleftgan_hpc.errors import DataError

LANDMARK_COLUMNS = (
    "left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y",
    "mouth_left_x", "mouth_left_y", "mouth_right_x", "mouth_right_y",
)
DETECT_EXTRA_HINT = "pip install 'cleftgan-hpc[detect]' (dlib-bin and face-recognition-models)"

# Detector tuning. Detection runs on a copy at most DETECT_MAX_SIDE pixels across (HOG cost
# grows with area; faces in clinical photos are large). Upsampling once finds faces down to
# ~40 px but also weak false positives, so it is only tried when nothing was found, and any
# detection below MIN_SCORE (dlib's SVM margin) is ignored.
DETECT_MAX_SIDE = 1024
MIN_SCORE = 0.3


def read_csv_rows(path: Path, required: tuple[str, ...], what: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV, with a clear DataError when it is unreadable or lacks columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{what} CSV {path}: cannot read it: {exc}") from None
    missing = [c for c in ("file", *required) if c not in header]
    if missing:
        have = ", ".join(header) or "none"
        raise DataError(f"{what} CSV {path}: missing column(s) {', '.join(missing)}; it has {have}")
    return header, rows


def read_landmarks_csv(path: Path) -> dict[str, np.ndarray | Rejected]:
    """Map file -> [4, 2] landmarks; a row with bad values maps to Rejected(reason)."""
    _, rows = read_csv_rows(path, LANDMARK_COLUMNS, "landmarks")
    out: dict[str, np.ndarray | Rejected] = {}
    for line, row in enumerate(rows, start=2):
        name = row["file"]
        if not name:
            continue
        try:
            values = [float(row[c]) for c in LANDMARK_COLUMNS]
            if not all(math.isfinite(v) for v in values):
                raise ValueError("not finite")
            out[name] = np.array(values, dtype=np.float64).reshape(4, 2)
        except ValueError:
            bad = [c for c in LANDMARK_COLUMNS if not _is_number(row[c])]
            out[name] = Rejected(f"landmarks CSV line {line}: non-numeric {', '.join(bad) or 'value'}")
    return out


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


class FileLookup:
    """Finds a CSV row for an image: by relative path, else by file name when unique."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = {k.replace("\\", "/").removeprefix("./"): v for k, v in table.items()}
        by_name: dict[str, list[str]] = {}
        for k in self.table:
            by_name.setdefault(k.rsplit("/", 1)[-1], []).append(k)
        self.by_name = {n: ks[0] for n, ks in by_name.items() if len(ks) == 1}

    def get(self, rel: str) -> Any | None:
        if rel in self.table:
            return self.table[rel]
        key = self.by_name.get(rel.rsplit("/", 1)[-1])
        return self.table[key] if key is not None else None


# -- the detector ---------------------------------------------------------------------------


def detector_available() -> bool:
    """Whether the optional detector packages are installed (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))


def _predictor_path() -> Path:
    # face_recognition_models' own helper imports pkg_resources (gone from new setuptools),
    # so locate the package directory without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the face landmark detector is not installed: {DETECT_EXTRA_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise DataError(f"face-recognition-models is installed but lacks {path.name}: reinstall it")
    return path


@functools.lru_cache(maxsize=1)
def _load_detector() -> tuple[Any, Any]:
    """dlib's detector and predictor, loaded once per process (the predictor file is 100 MB)."""
    try:
        import dlib
    except ImportError:
        raise DataError(f"the face landmark detector is not installed: {DETECT_EXTRA_HINT}") from None
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(_predictor_path()))


def detect_landmarks(image: Image.Image) -> np.ndarray | Rejected:
    """Five-point landmarks of the one face in ``image``, or Rejected when there is not exactly one.

    Raises DataError only when the detector is not installed (a set-up problem, not bad input).
    """
    detector, predictor = _load_detector()
    scale = min(1.0, DETECT_MAX_SIDE / max(image.size))
    small = image if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
    )
    arr = np.asarray(small.convert("RGB"))
    faces: list[Any] = []
    for upsample in (0, 1):
        rects, scores, _ = detector.run(arr, upsample, 0.0)
        faces = [r for r, s in zip(rects, scores, strict=True) if s >= MIN_SCORE]
        if faces:
            break
    if len(faces) != 1:
        return Rejected("no face detected" if not faces else f"{len(faces)} faces detected, expected exactly one")
    shape = predictor(arr, faces[0])
    pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # [68, 2], iBUG 300-W order
    lm = np.stack([pts[36:42].mean(axis=0), pts[42:48].mean(axis=0), pts[48], pts[54]])
    return (lm + 0.5) / scale - 0.5  # pixel centres back to the original photo's coordinates

"""Landmarks from the CSV, and the optional offline detector (dlib) on a real photo."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from PIL import Image

from cleftgan_hpc.data.images import Rejected
from cleftgan_hpc.data.landmarks import LANDMARK_COLUMNS, FileLookup, read_landmarks_csv
from cleftgan_hpc.errors import DataError

HEADER = "file," + ",".join(LANDMARK_COLUMNS)


def test_read_landmarks_csv(tmp_path):
    p = tmp_path / "lm.csv"
    p.write_text(
        "\ufeff" + HEADER + "\n"  # a BOM, as Excel writes it
        "a/one.jpg,10,20,30,20.5,12,40,28,40\n"
        "two.png,1,2,3,x,5,6,7,\n"
        ",1,2,3,4,5,6,7,8\n"
    )
    table = read_landmarks_csv(p)
    np.testing.assert_array_equal(table["a/one.jpg"], [[10, 20], [30, 20.5], [12, 40], [28, 40]])
    bad = table["two.png"]
    assert isinstance(bad, Rejected) and "line 3" in bad.reason and "right_eye_y" in bad.reason
    assert "mouth_right_y" in bad.reason and len(table) == 2


def test_landmarks_csv_missing_columns(tmp_path):
    p = tmp_path / "lm.csv"
    p.write_text("file,left_eye_x,left_eye_y\nx.png,1,2\n")
    with pytest.raises(DataError, match="missing column.*right_eye_x"):
        read_landmarks_csv(p)
    with pytest.raises(DataError, match="cannot read"):
        read_landmarks_csv(tmp_path / "absent.csv")


def test_file_lookup_by_path_then_unique_name():
    look = FileLookup({"./a/x.png": 1, "b/y.png": 2, "c/y.png": 3})
    assert look.get("a/x.png") == 1
    assert look.get("elsewhere/x.png") == 1  # unique file name
    assert look.get("b/y.png") == 2
    assert look.get("d/y.png") is None  # ambiguous name: no guess


needs_detector = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("dlib", "face_recognition_models", "skimage")),
    reason="detector extra (dlib-bin, face-recognition-models) or scikit-image not installed",
)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data  # a real portrait that ships inside scikit-image (offline)

    return Image.fromarray(data.astronaut())


@needs_detector
def test_detector_finds_the_astronauts_eyes_and_mouth(astronaut):
    from cleftgan_hpc.data.landmarks import detect_landmarks

    lm = detect_landmarks(astronaut)
    assert not isinstance(lm, Rejected), lm
    # Hand-checked positions on the 512x512 photo (eye centres, mouth corners), +-6 px.
    expected = np.array([[203, 101], [247, 104], [201, 140], [245, 141]])
    np.testing.assert_allclose(lm, expected, atol=6)


@needs_detector
def test_detector_scales_back_from_a_downsized_copy(astronaut):
    from cleftgan_hpc.data.landmarks import detect_landmarks

    big = astronaut.resize((2048, 2048), Image.Resampling.BICUBIC)  # detection runs at 1024
    lm = detect_landmarks(big)
    assert not isinstance(lm, Rejected), lm
    np.testing.assert_allclose(lm / 4, [[203, 101], [247, 104], [201, 140], [245, 141]], atol=8)


@needs_detector
def test_detector_rejects_no_face_and_two_faces(astronaut):
    from cleftgan_hpc.data.landmarks import detect_landmarks

    blank = Image.new("RGB", (256, 256), (120, 140, 160))
    assert detect_landmarks(blank) == Rejected("no face detected")
    face = astronaut.crop((120, 30, 330, 240))
    pair = Image.new("RGB", (420, 210))
    pair.paste(face, (0, 0))
    pair.paste(face, (210, 0))
    two = detect_landmarks(pair)
    assert isinstance(two, Rejected) and "2 faces" in two.reason


def test_missing_detector_says_how_to_install(monkeypatch):
    from cleftgan_hpc.data import landmarks

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    landmarks._load_detector.cache_clear()
    try:
        with pytest.raises(DataError, match=r"pip install 'cleftgan-hpc\[detect\]'"):
            landmarks.detect_landmarks(Image.new("RGB", (64, 64)))
        assert not landmarks.detector_available()
    finally:
        landmarks._load_detector.cache_clear()

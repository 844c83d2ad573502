"""Demo faces: deterministic per seed, severity labels that match what is drawn, a CLI."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest

from cleftgan_hpc.data.commands import add_commands
from cleftgan_hpc.data.demo_faces import (
    demo_file_name,
    draw_face,
    face_rng,
    make_demo_data,
    severity_group,
)
from cleftgan_hpc.data.images import Decoded, decode_image
from cleftgan_hpc.data.landmarks import read_landmarks_csv


def files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_per_seed_and_independent_of_count(tmp_path):
    a = files(make_demo_data(tmp_path / "a", 8, seed=5, size=96).images.parent)
    b = files(make_demo_data(tmp_path / "b", 8, seed=5, size=96).images.parent)
    assert a == b
    c = files(make_demo_data(tmp_path / "c", 8, seed=6, size=96).images.parent)
    assert a["images/face_00000.png"] != c["images/face_00000.png"]
    d = files(make_demo_data(tmp_path / "d", 3, seed=5, size=96).images.parent)
    assert all(d[f"images/{demo_file_name(i)}"] == a[f"images/{demo_file_name(i)}"] for i in range(3))


def test_csvs_and_files_agree(tmp_path):
    s = make_demo_data(tmp_path, 13, seed=1, size=96)
    with open(s.labels) as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [demo_file_name(i) for i in range(13)]
    assert sorted(p.name for p in s.images.iterdir()) == sorted(r["file"] for r in rows)
    assert {p.suffix for p in s.images.iterdir()} == {".png", ".jpg"}
    for r in rows:
        sev = float(r["severity"])
        assert 0 <= sev <= 1 and int(r["group"]) == severity_group(sev)
    assert sum(s.groups) == 13 and all(g > 0 for g in s.groups)
    lms = read_landmarks_csv(s.landmarks)
    for r in rows:
        d = decode_image(s.images / r["file"])  # face_00011.jpg is stored sideways with EXIF
        assert isinstance(d, Decoded) and d.image.size == (96, 96)
        (lx, ly), (rx, ry) = lms[r["file"]][:2]
        assert lx < rx
        img = np.asarray(d.image.convert("L"), dtype=float)
        for x, y in ((lx, ly), (rx, ry)):  # the eye landmark is the pupil: dark
            assert img[round(y), round(x)] < 90, (r["file"], x, y)


def test_severity_is_what_is_drawn():
    # Same face (same random stream), different severities: the change grows with severity and
    # lies between the nose and the mouth.
    base = draw_face(face_rng(2, 0), 256, severity=0.0)
    changed = []
    for sev in (0.25, 0.5, 0.75, 1.0):
        f = draw_face(face_rng(2, 0), 256, severity=sev)
        np.testing.assert_array_equal(f.landmarks, base.landmarks)
        diff = np.abs(np.asarray(f.image, float) - np.asarray(base.image, float)).sum(axis=-1) > 60
        ys, xs = np.nonzero(diff)
        changed.append(diff.sum())
        mouth = base.landmarks[2:].mean(axis=0)
        eyes = base.landmarks[:2].mean(axis=0)
        dist = np.hypot(xs - mouth[0], ys - mouth[1])
        assert dist.max() < 0.8 * np.hypot(*(mouth - eyes)), "the notch stays between the nose and the mouth"
    assert changed == sorted(changed) and changed[0] > 0
    assert severity_group(0.0) == 0 and severity_group(0.4) == 1 and severity_group(1.0) == 2


def test_cli_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["make-demo-data", str(tmp_path / "out"), "--count", "3", "--seed", "4", "--size", "64"])
    assert args.func(args) == 0
    assert "wrote 3 faces" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "images").iterdir())) == 3
    for bad in (["--count", "0"], ["--size", "12"], ["--seed", "-1"], ["--count", "many"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["make-demo-data", str(tmp_path), *bad])

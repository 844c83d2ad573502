"""The preprocess stage end to end: demo faces plus every kind of bad file, in a local store."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.data.align import align_face, standardise_background
from cleftgan_hpc.data.dataset import open_dataset
from cleftgan_hpc.data.demo_faces import make_demo_data
from cleftgan_hpc.data.landmarks import LANDMARK_COLUMNS
from cleftgan_hpc.errors import DataError
from cleftgan_hpc.jobspec.stages import PreprocessStage
from cleftgan_hpc.stages import preprocess
from cleftgan_hpc.storage.local import LocalStore

N_FACES = 24


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def save(im: Image.Image, path: Path, fmt: str, **kw: object) -> None:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 demo faces at 128 px plus variants of face 0..7 and broken files, with CSVs."""
    root = tmp_path_factory.mktemp("photos")
    make_demo_data(root, N_FACES, seed=11, size=128)
    images = root / "images"
    # Other faces (another seed) are the sources of the variants, so only the copy is a duplicate.
    src = make_demo_data(root / "sources", 9, seed=12, size=128)
    with open(src.landmarks) as f:
        lm = {r["file"]: r for r in csv.DictReader(f)}
    with open(src.labels) as f:
        labels = {r["file"]: r for r in csv.DictReader(f)}
    faces = [Image.open(src.images / f"face_{i:05d}.png").convert("RGB") for i in (0, 1, 2, 3, 4, 6, 7, 8)]
    extra: dict[str, str] = {}  # new file -> the source face whose landmarks and labels it shares

    # Normalised and accepted: CMYK, 16-bit greyscale, greyscale, alpha, EXIF rotation.
    save(faces[1].convert("CMYK"), images / "v_cmyk.jpg", "JPEG", quality=95)
    extra["v_cmyk.jpg"] = "face_00001.png"
    grey16 = (np.asarray(faces[2].convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save(Image.fromarray(grey16), images / "v_grey16.png", "PNG")
    extra["v_grey16.png"] = "face_00002.png"
    save(faces[3].convert("L"), images / "v_grey.png", "PNG")
    extra["v_grey.png"] = "face_00003.png"
    alpha = np.asarray(faces[4].convert("RGBA")).copy()
    alpha[:20, :, 3] = 0  # a transparent band at the top
    save(Image.fromarray(alpha, "RGBA"), images / "v_alpha.png", "PNG")
    extra["v_alpha.png"] = "face_00004.png"
    exif = Image.Exif()
    exif[0x0112] = 8
    save(faces[5].transpose(Image.Transpose.ROTATE_270), images / "v_exif8.jpg", "JPEG", quality=95, exif=exif.tobytes())
    extra["v_exif8.jpg"] = "face_00006.png"
    # A near-duplicate: face 0 of the dataset re-encoded as a JPEG (sorted after face_00000.png).
    with open(root / "landmarks.csv") as f:
        lm["copy"] = next(r for r in csv.DictReader(f) if r["file"] == "face_00000.png")
    with open(root / "labels.csv") as f:
        labels["copy"] = next(r for r in csv.DictReader(f) if r["file"] == "face_00000.png")
    save(Image.open(images / "face_00000.png").convert("RGB"), images / "face_00000_copy.jpg", "JPEG", quality=80)
    extra["face_00000_copy.jpg"] = "copy"

    # Rejected: zero-byte, truncated, not an image, decompression bomb, no landmarks row.
    (images / "x_empty.jpg").write_bytes(b"")
    full = (src.images / "face_00007.png").read_bytes()
    (images / "x_truncated.png").write_bytes(full[: len(full) // 3])
    extra["x_truncated.png"] = "face_00007.png"
    (images / "x_text.jpg").write_text("not a photo")
    (images / "x_bomb.png").write_bytes(png_bomb(20000, 20000))
    save(faces[7], images / "x_no_landmarks.png", "PNG")
    (images / "README.txt").write_text("ignored")

    with open(root / "landmarks.csv", "a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for new, src in extra.items():
            w.writerow([new, *(lm[src][c] for c in LANDMARK_COLUMNS)])
    with open(root / "labels.csv", "a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for new, src in extra.items():
            w.writerow([new, labels[src]["severity"], labels[src]["group"]])
    return root


def make_ctx(tmp_path: Path, run_id: str = "r1", cpus: int = 2) -> StageContext:
    return StageContext(
        store=LocalStore(tmp_path / "store"), run_id=run_id, stage="prep", scratch=tmp_path / "scratch" / run_id,
        log=logging.getLogger("test.preprocess"), cpus=cpus,
    )


def config(photos: Path, **kw: object) -> PreprocessStage:
    fields = {
        "kind": "preprocess", "images": str(photos / "images"), "landmarks": str(photos / "landmarks.csv"),
        "labels": str(photos / "labels.csv"), "label_column": "group", "resolution": 64, "background": "solid",
    }
    fields.update(kw)
    return PreprocessStage.model_validate(fields)


def test_end_to_end(photos, tmp_path):
    ctx = make_ctx(tmp_path)
    out = preprocess.run(config(photos, workers=2), ctx)
    assert out == {name: ctx.key(file) for name, file in PreprocessStage.outputs.items()}
    store = ctx.store
    report = store.get_json(out["report"])

    rejected = {r["file"]: r["reason"] for r in report["rejected"]}
    assert set(rejected) == {"x_empty.jpg", "x_truncated.png", "x_text.jpg", "x_bomb.png", "x_no_landmarks.png"}
    assert "empty" in rejected["x_empty.jpg"]
    assert "truncated" in rejected["x_truncated.png"] or "corrupt" in rejected["x_truncated.png"]
    assert "not an image" in rejected["x_text.jpg"]
    assert "decompression bomb" in rejected["x_bomb.png"]
    assert "no landmarks" in rejected["x_no_landmarks.png"] or "no face" in rejected["x_no_landmarks.png"]
    assert report["duplicates"] == [
        {"file": "face_00000_copy.jpg", "duplicate_of": "face_00000.png",
         "distance": report["duplicates"][0]["distance"], "thumb_rms": report["duplicates"][0]["thumb_rms"]}
    ]
    assert report["ignored"][0]["file"] == "README.txt"

    accepted = {r["file"]: r for r in report["accepted"]}
    variants = {"v_cmyk.jpg", "v_grey16.png", "v_grey.png", "v_alpha.png", "v_exif8.jpg"}
    assert set(accepted) == {f"face_{i:05d}.{'jpg' if i % 6 == 5 else 'png'}" for i in range(N_FACES)} | variants
    assert any("CMYK" in n for n in accepted["v_cmyk.jpg"]["notes"])
    assert any("16-bit" in n for n in accepted["v_grey16.png"]["notes"])
    assert any("alpha" in n for n in accepted["v_alpha.png"]["notes"])
    assert any("orientation 8" in n for n in accepted["v_exif8.jpg"]["notes"])
    assert report["counts"] == {"found": 35, "accepted": 29, "rejected": 5, "duplicates": 1, "ignored": 1}

    local = tmp_path / "dataset.zip"
    store.get_file(out["dataset"], local)
    ds = open_dataset(local)
    assert (ds.count, ds.resolution, ds.channels) == (29, 64, 3)
    with open(photos / "labels.csv") as f:
        groups = {r["file"]: int(r["group"]) for r in csv.DictReader(f)}
    by_name = {r["dataset_name"]: r["file"] for r in report["accepted"]}
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [groups[by_name[n]] for n in ds.names]
    assert sorted(by_name.values()) == [by_name[n] for n in ds.names]  # dataset order = file-name order
    # The exif-rotated photo aligns to (nearly) what its upright source aligns to.
    idx = {by_name[n]: i for i, n in enumerate(ds.names)}
    source = Image.open(photos / "sources" / "images" / "face_00006.png").convert("RGB")
    with open(photos / "sources" / "landmarks.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["file"] == "face_00006.png")
    aligned, aligned_lm = align_face(source, np.array([float(row[c]) for c in LANDMARK_COLUMNS]).reshape(4, 2), 64)
    expected = np.asarray(standardise_background(aligned, aligned_lm, "solid"), dtype=int)
    assert np.abs(ds[idx["v_exif8.jpg"]].astype(int) - expected).mean() < 4
    # Background: solid grey in the corners.
    assert tuple(ds[0][0, 0]) == (128, 128, 128)

    with Image.open(io.BytesIO(store.get_bytes(out["contact_sheet"]))) as sheet:
        assert sheet.size[0] > 64 * 5


def test_byte_identical_across_runs_and_worker_counts(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "detector_available", lambda: False)  # saves loading it 3 times
    shas = []
    for run_id, workers in (("a", 2), ("b", 1)):
        ctx = make_ctx(tmp_path, run_id)
        out = preprocess.run(config(photos, workers=workers, label_column="severity", background="blur"), ctx)
        shas.append(tuple(hashlib.sha256(ctx.store.get_bytes(out[k])).hexdigest() for k in sorted(out)))
    assert shas[0] == shas[1]
    # Idempotent: run "a" again over its own leftovers; same outputs.
    ctx = make_ctx(tmp_path, "a")
    out = preprocess.run(config(photos, workers=2, label_column="severity", background="blur"), ctx)
    assert tuple(hashlib.sha256(ctx.store.get_bytes(out[k])).hexdigest() for k in sorted(out)) == shas[0]
    local = tmp_path / "d.zip"
    ctx.store.get_file(out["dataset"], local)
    assert open_dataset(local).labels.dtype == np.float32


def test_unlabelled_without_dedupe(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "detector_available", lambda: False)
    ctx = make_ctx(tmp_path)
    out = preprocess.run(config(photos, labels=None, label_column=None, dedupe=False, workers=1), ctx)
    report = ctx.store.get_json(out["report"])
    assert report["duplicates"] == [] and report["counts"]["accepted"] == 30
    local = tmp_path / "u.zip"
    ctx.store.get_file(out["dataset"], local)
    assert open_dataset(local).labels is None


def test_missing_label_rejects_that_photo(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "detector_available", lambda: False)
    rows = (photos / "labels.csv").read_text().splitlines()
    trimmed = tmp_path / "labels.csv"
    trimmed.write_text("\n".join(r for r in rows if not r.startswith("face_00002.png")) + "\n")
    ctx = make_ctx(tmp_path)
    out = preprocess.run(config(photos, labels=str(trimmed), workers=1), ctx)
    rejected = {r["file"]: r["reason"] for r in ctx.store.get_json(out["report"])["rejected"]}
    assert "no 'group' value" in rejected["face_00002.png"]


def test_bad_label_values_and_columns_fail_clearly(photos, tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("file,group\nface_00000.png,complete\n")
    with pytest.raises(DataError, match="line 2.*not a number"):
        preprocess.run(config(photos, labels=str(bad), workers=1), make_ctx(tmp_path))
    with pytest.raises(DataError, match="missing column.*severity"):
        preprocess.run(config(photos, labels=str(bad), label_column="severity", workers=1), make_ctx(tmp_path))


def test_without_detector_and_landmarks(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "detector_available", lambda: False)
    with pytest.raises(DataError, match=r"pip install 'cleftgan-hpc\[detect\]'"):
        preprocess.run(config(photos, landmarks=None, workers=1), make_ctx(tmp_path))
    # With the centre-crop fallback every decodable photo is kept, and says why.
    ctx = make_ctx(tmp_path, "cc")
    out = preprocess.run(config(photos, landmarks=None, fallback="center_crop", dedupe=False, workers=2), ctx)
    report = ctx.store.get_json(out["report"])
    assert report["counts"]["accepted"] == 30
    assert all(r["landmarks"] == "center_crop" for r in report["accepted"])


def test_nothing_accepted_fails_with_the_report(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"")
    cfg = PreprocessStage.model_validate({"kind": "preprocess", "images": str(images), "fallback": "center_crop"})
    ctx = make_ctx(tmp_path)
    with pytest.raises(DataError, match="no photo was accepted"):
        preprocess.run(cfg, ctx)
    assert ctx.store.get_json(ctx.key("report.json"))["rejected"][0]["file"] == "a.jpg"
    with pytest.raises(DataError, match="no photos"):
        preprocess.run(cfg.model_copy(update={"images": str(tmp_path / "store")}), make_ctx(tmp_path, "e"))


def test_stop_request(photos, tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.request_stop()
    with pytest.raises(StopRequested):
        preprocess.run(config(photos, workers=1), ctx)
    with pytest.raises(StopRequested):
        preprocess.run(config(photos, workers=2), ctx)


def test_faces_below_min_face_size_are_rejected_not_upscaled(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "detector_available", lambda: False)
    src = make_demo_data(tmp_path / "demo", 1, seed=5, size=128)
    images = tmp_path / "in"
    images.mkdir()
    face = Image.open(src.images / "face_00000.png").convert("RGB")
    with open(src.landmarks) as f:
        row = next(csv.DictReader(f))
    lm = np.array([float(row[c]) for c in LANDMARK_COLUMNS])
    save(face, images / "big.png", "PNG")  # FFHQ crop of about 80 px: fine for 64 px output
    save(face.resize((32, 32), Image.Resampling.LANCZOS), images / "small.png", "PNG")  # a crop of about 20 px
    save(Image.new("RGB", (1, 1), (200, 150, 120)), images / "tiny.png", "PNG")  # no landmarks: centre crop
    with open(tmp_path / "lm.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", *LANDMARK_COLUMNS])
        w.writerow(["big.png", *lm])
        w.writerow(["small.png", *(lm / 4)])

    def run(run_id: str, **kw: object) -> dict:
        cfg = PreprocessStage.model_validate({
            "kind": "preprocess", "images": str(images), "landmarks": str(tmp_path / "lm.csv"), "resolution": 64,
            "fallback": "center_crop", "dedupe": False, "workers": 1, **kw,
        })
        ctx = make_ctx(tmp_path, run_id)
        return ctx.store.get_json(preprocess.run(cfg, ctx)["report"])

    report = run("default")  # min_face_size defaults to half the resolution: 32 px
    assert [r["file"] for r in report["accepted"]] == ["big.png"]
    assert not any("upscaled" in n for n in report["accepted"][0]["notes"])
    rejected = {r["file"]: r["reason"] for r in report["rejected"]}
    assert set(rejected) == {"small.png", "tiny.png"}
    assert rejected["small.png"].startswith("face (csv landmarks) too small: 2")
    assert "min_face_size=32" in rejected["small.png"]
    assert rejected["tiny.png"].startswith("centre crop too small: 1 px across, below min_face_size=32")
    assert "upscaled 64.0x" in rejected["tiny.png"] and "no landmarks" in rejected["tiny.png"]

    with pytest.raises(DataError, match="no photo was accepted"):  # an explicit floor above the 80 px face
        run("strict", min_face_size=100)
    report = run("any", min_face_size=1)  # opting out: accepted, and the report says they were upscaled
    notes = {r["file"]: r["notes"] for r in report["accepted"]}
    assert set(notes) == {"big.png", "small.png", "tiny.png"}
    assert any(n.startswith("face upscaled 64.0x from 1 px") for n in notes["tiny.png"])
    assert any(n.startswith("face upscaled 3.") for n in notes["small.png"])
    with pytest.raises(ValueError, match="min_face_size"):
        PreprocessStage.model_validate({"kind": "preprocess", "images": "x", "min_face_size": 0})

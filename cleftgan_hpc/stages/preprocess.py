"""The preprocess stage: a folder of face photos -> an aligned training dataset, a report and a
contact sheet.

Per photo (in a process pool): safe decode -> perceptual hash -> landmarks (CSV, else the
detector, else the centre-crop fallback or a rejection) -> the minimum face size (a smaller face
is rejected, never upscaled into noise) -> FFHQ alignment -> background
standardisation -> deterministic PNG in scratch. Then, in file-name order: near-duplicate
removal, labels, the dataset zip, report.json and contact_sheet.png, uploaded to the store.

Bad input never stops the stage: each photo is accepted or rejected with a reason. The stage
fails only for set-up errors (a missing folder, a malformed CSV, no detector and no landmarks)
or when no photo at all was accepted. Re-running recomputes from the inputs into a fresh
scratch folder and overwrites the outputs with byte-identical files, so it is idempotent.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.data.align import align_face, center_crop, face_size, standardise_background
from cleftgan_hpc.data.dataset import DatasetWriter, encode_png
from cleftgan_hpc.data.dedupe import find_duplicates, phash, thumbnail
from cleftgan_hpc.data.images import Rejected, decode_image, list_images
from cleftgan_hpc.data.landmarks import (
    DETECT_EXTRA_HINT,
    FileLookup,
    detect_landmarks,
    detector_available,
    read_csv_rows,
    read_landmarks_csv,
)
from cleftgan_hpc.errors import CleftGanError, DataError
from cleftgan_hpc.jobspec.stages import PreprocessStage
from cleftgan_hpc.storage.base import sha256_file

REPORT_VERSION = 1
SHEET_MAX_IMAGES = 1024  # the contact sheet shows at most this many (in dataset order)
SHEET_THUMB = 96
LANDMARK_SLACK = 0.25  # CSV landmarks may lie this fraction of the photo's size outside it


@dataclass(frozen=True)
class Params:
    """What every worker needs (picklable)."""

    resolution: int
    min_face_size: int  # source pixels; smaller faces are rejected, not upscaled
    fallback: str
    background: str
    background_color: tuple[int, int, int]
    blur_radius: float
    max_pixels: int
    use_detector: bool
    out_dir: str


@dataclass(frozen=True)
class Job:
    index: int
    file: str  # relative POSIX path, the photo's name everywhere in the report
    path: str
    landmarks: np.ndarray | Rejected | None  # from the CSV; None: no row


def process_one(job: Job, p: Params) -> dict[str, Any]:
    """Decode, align and standardise one photo into ``p.out_dir``; never raises."""
    try:
        return _process(job, p)
    except DataError as exc:  # the detector vanished between the check and here
        return {"file": job.file, "status": "rejected", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one odd photo must not stop the stage
        return {"file": job.file, "status": "rejected", "reason": f"internal error: {type(exc).__name__}: {exc}"}


def _process(job: Job, p: Params) -> dict[str, Any]:
    decoded = decode_image(job.path, max_pixels=p.max_pixels)
    if isinstance(decoded, Rejected):
        return {"file": job.file, "status": "rejected", "reason": decoded.reason}
    image, notes = decoded.image, list(decoded.notes)
    result: dict[str, Any] = {
        "file": job.file, "size": list(image.size),
        "phash": f"{phash(image):016x}", "thumb": thumbnail(image).tobytes(),
    }

    lm, source, why_not = job.landmarks, "csv", None
    if isinstance(lm, Rejected):
        lm, why_not = None, lm.reason
    elif lm is not None:
        why_not = _landmarks_outside(lm, image.size)
        lm = None if why_not else lm
    elif p.use_detector:
        found, source = detect_landmarks(image), "detector"
        lm, why_not = (None, found.reason) if isinstance(found, Rejected) else (found, None)
    else:
        why_not = "no landmarks for this file in the CSV and no face detector installed"

    if lm is not None:
        try:
            side = face_size(lm)
            if side < p.min_face_size:
                return {**result, "status": "rejected", "reason": _too_small(f"face ({source} landmarks)", side, p)}
            aligned, aligned_lm = align_face(image, lm, p.resolution)
        except ValueError as exc:
            return {**result, "status": "rejected", "reason": f"cannot align: {exc}"}
        _note_upscale(notes, side, p)
        aligned = standardise_background(
            aligned, aligned_lm, p.background, color=p.background_color, blur_radius=p.blur_radius
        )
    elif p.fallback == "center_crop":
        side = min(image.size)
        if side < p.min_face_size:
            return {**result, "status": "rejected", "reason": f"{_too_small('centre crop', side, p)} ({why_not})"}
        source = "center_crop"
        _note_upscale(notes, side, p)
        aligned = center_crop(image, p.resolution)
        notes.append(f"centre crop: {why_not}")
        if p.background != "none":
            notes.append("background left as is (no face geometry)")
    else:
        return {**result, "status": "rejected", "reason": why_not}

    out = Path(p.out_dir) / f"{job.index:06d}.png"
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(encode_png(aligned))
    tmp.replace(out)
    return {**result, "status": "accepted", "landmarks": source, "notes": notes, "png": str(out)}


def _too_small(what: str, side: float, p: Params) -> str:
    return (f"{what} too small: {side:.0f} px across, below min_face_size={p.min_face_size} "
            f"(it would be upscaled {p.resolution / side:.1f}x to {p.resolution} px)")


def _note_upscale(notes: list[str], side: float, p: Params) -> None:
    # allowed by min_face_size, but the report says so: upscaling is never silent
    if side < p.resolution:
        notes.append(f"face upscaled {p.resolution / side:.1f}x from {side:.0f} px")


def _landmarks_outside(lm: np.ndarray, size: tuple[int, int]) -> str | None:
    w, h = size
    lo = -LANDMARK_SLACK * np.array([w, h])
    hi = (1 + LANDMARK_SLACK) * np.array([w, h])
    if np.any(lm < lo) or np.any(lm > hi):
        return f"CSV landmarks lie outside the {w}x{h} photo (wrong file, or coordinates of a rotated copy?)"
    return None


# -- labels ---------------------------------------------------------------------------------


def read_labels(path: Path, column: str) -> tuple[FileLookup, str]:
    """file -> label from ``column``: ints when every value is integer-valued, else floats."""
    _, rows = read_csv_rows(path, (column,), "labels")
    raw: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        if not row["file"] or row[column] == "":
            continue  # an empty label: that photo is rejected for lacking one
        try:
            value = float(row[column])
        except ValueError:
            raise DataError(
                f"labels CSV {path} line {line}: {column}={row[column]!r} is not a number "
                "(labels must be integer classes or floats)"
            ) from None
        if not math.isfinite(value):
            raise DataError(f"labels CSV {path} line {line}: {column}={row[column]!r} is not finite")
        raw[row["file"]] = value
    integer = all(v.is_integer() for v in raw.values())
    table = {k: int(v) if integer else v for k, v in raw.items()}
    return FileLookup(table), "int" if integer else "float"


# -- the stage ------------------------------------------------------------------------------


def run(cfg: PreprocessStage, ctx: StageContext) -> dict[str, str]:
    work = ctx.scratch / "preprocess"
    shutil.rmtree(work, ignore_errors=True)  # a previous attempt's partial files are not trusted
    aligned_dir = work / "aligned"
    aligned_dir.mkdir(parents=True)

    images_dir = ctx.fetch(cfg.images)
    if not images_dir.is_dir():
        raise DataError(f"images {cfg.images!r}: {images_dir} is not a directory")
    files, ignored = list_images(images_dir)
    if not files:
        raise DataError(f"images {cfg.images!r}: no photos (.jpg, .png, .webp, .tif, .bmp) under {images_dir}")
    lm_table = FileLookup(read_landmarks_csv(ctx.fetch(cfg.landmarks))) if cfg.landmarks else None
    labels, label_kind = None, None
    if cfg.labels and cfg.label_column:
        labels, label_kind = read_labels(ctx.fetch(cfg.labels), cfg.label_column)

    use_detector = detector_available()
    if not use_detector:
        if cfg.landmarks is None and cfg.fallback == "reject":
            raise DataError(
                f"no landmarks CSV given and the face landmark detector is not installed: {DETECT_EXTRA_HINT}, "
                "or give 'landmarks', or set fallback: center_crop"
            )
        ctx.log.warning(f"face detector not installed ({DETECT_EXTRA_HINT}): photos without CSV landmarks "
                        f"{'are centre-cropped' if cfg.fallback == 'center_crop' else 'are rejected'}")

    params = Params(
        resolution=cfg.resolution, fallback=cfg.fallback, background=cfg.background,
        # default: half the resolution, so no face is upscaled more than 2x
        min_face_size=cfg.min_face_size if cfg.min_face_size is not None else cfg.resolution // 2,
        background_color=tuple(cfg.background_color), blur_radius=cfg.blur_radius,
        max_pixels=cfg.max_image_pixels, use_detector=use_detector, out_dir=str(aligned_dir),
    )
    jobs = [
        Job(i, f, str(images_dir / f), lm_table.get(f) if lm_table else None) for i, f in enumerate(files)
    ]
    workers = max(1, min(cfg.workers or ctx.cpus, len(jobs)))
    ctx.log.info(f"preprocessing {len(jobs)} photos at {cfg.resolution}x{cfg.resolution} with {workers} worker(s)")
    results = _map(jobs, params, workers, ctx)

    accepted = [r for r in results if r["status"] == "accepted"]
    rejected = [{"file": r["file"], "reason": r["reason"]} for r in results if r["status"] == "rejected"]
    duplicates = []
    if cfg.dedupe:
        signatures = [(r["file"], int(r["phash"], 16), np.frombuffer(r["thumb"], np.uint8)) for r in accepted]
        dups = find_duplicates(signatures, cfg.dedupe_distance)
        duplicates = [
            {"file": d.name, "duplicate_of": d.duplicate_of, "distance": d.distance, "thumb_rms": d.rms} for d in dups
        ]
        dropped = {d.name for d in dups}
        accepted = [r for r in accepted if r["file"] not in dropped]
    if labels is not None:
        kept = []
        for r in accepted:
            label = labels.get(r["file"])
            if label is None:
                rejected.append({"file": r["file"], "reason": f"no {cfg.label_column!r} value in the labels CSV"})
            else:
                kept.append({**r, "label": label})
        accepted = kept
    rejected.sort(key=lambda r: r["file"])
    for r in accepted:
        del r["thumb"]  # bytes: for dedupe only, not for the JSON report

    pngs = [Path(r.pop("png")) for r in accepted]  # scratch paths stay out of the report
    with DatasetWriter(work / PreprocessStage.outputs["dataset"]) as writer:
        for r, png in zip(accepted, pngs, strict=True):
            r["dataset_name"] = writer.add_png(png.read_bytes())
        writer.close([r["label"] for r in accepted] if labels is not None else None)
    contact_sheet(pngs, work / PreprocessStage.outputs["contact_sheet"], thumb=min(SHEET_THUMB, cfg.resolution))

    report = {
        "version": REPORT_VERSION,
        "resolution": cfg.resolution,
        "background": cfg.background,
        "labels": {"column": cfg.label_column, "type": label_kind} if labels is not None else None,
        "counts": {
            "found": len(files), "accepted": len(accepted), "rejected": len(rejected),
            "duplicates": len(duplicates), "ignored": len(ignored),
        },
        "accepted": accepted,
        "rejected": rejected,
        "duplicates": duplicates,
        "ignored": [{"file": f, "reason": "not an image file name (.jpg, .png, .webp, .tif, .bmp)"} for f in ignored],
    }
    report_path = work / PreprocessStage.outputs["report"]
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    c = report["counts"]
    ctx.log.info(f"accepted {c['accepted']} of {c['found']} photos: {c['rejected']} rejected, "
                 f"{c['duplicates']} duplicates, {c['ignored']} other files ignored")

    outputs = {name: ctx.key(file) for name, file in PreprocessStage.outputs.items()}
    if not accepted:
        _upload(ctx, outputs["report"], report_path)
        raise DataError(f"no photo was accepted ({c['rejected']} rejected): see {ctx.store.uri(outputs['report'])}")
    # The dataset last: a consumer that sees it can trust the report beside it.
    for name in ("report", "contact_sheet", "dataset"):
        _upload(ctx, outputs[name], work / PreprocessStage.outputs[name])
    return outputs


def _upload(ctx: StageContext, key: str, path: Path) -> None:
    """Put ``path`` at ``key`` unless an identical object is already there (a re-run)."""
    info = ctx.store.head(key)
    if info is not None and info.sha256 == sha256_file(path):
        return
    ctx.store.put_file(key, path)


def _map(jobs: list[Job], params: Params, workers: int, ctx: StageContext) -> list[dict[str, Any]]:
    """``process_one`` over every job, in a pool when workers > 1; results in job order."""
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    progress = ctx.progress(len(jobs), "preprocess", "photos")
    if workers == 1:
        for job in jobs:
            if ctx.should_stop():
                raise StopRequested("preprocess stopped before finishing; it restarts from the inputs")
            results[job.index] = process_one(job, params)
            progress.update()
    else:
        # forkserver: never fork a parent that may hold threads (logging, store clients).
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            pending: set[Future[dict[str, Any]]] = set()
            index_of: dict[Future[dict[str, Any]], int] = {}
            queue = iter(jobs)
            try:
                for job in queue:
                    fut = pool.submit(process_one, job, params)
                    index_of[fut] = job.index
                    pending.add(fut)
                    if len(pending) >= workers * 4:  # bounded: a million photos never queue at once
                        pending = _drain(pending, index_of, results, progress, ctx)
                while pending:
                    pending = _drain(pending, index_of, results, progress, ctx)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    progress.close()
    return [r for r in results if r is not None]


def _drain(pending: set[Future[dict[str, Any]]], index_of: dict[Future[dict[str, Any]], int],
           results: list[dict[str, Any] | None], progress: Any, ctx: StageContext) -> set[Future[dict[str, Any]]]:
    done, rest = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
    for fut in done:
        try:
            results[index_of.pop(fut)] = fut.result()
        except Exception as exc:  # a worker died (out of memory, a decoder crash)
            raise CleftGanError(f"a preprocessing worker failed: {type(exc).__name__}: {exc}") from exc
        progress.update()
    if ctx.should_stop():
        raise StopRequested("preprocess stopped before finishing; it restarts from the inputs")
    return set(rest)


def contact_sheet(paths: list[Path], out: Path, thumb: int = SHEET_THUMB) -> Path:
    """A grid of thumbnails of the accepted photos (at most SHEET_MAX_IMAGES), as a PNG."""
    paths = paths[:SHEET_MAX_IMAGES]
    if not paths:
        sheet = Image.new("RGB", (4 * thumb, thumb), (40, 40, 40))
        ImageDraw.Draw(sheet).text((8, thumb // 2 - 6), "no photo accepted", fill=(230, 230, 230))
    else:
        cols = math.ceil(math.sqrt(len(paths)))
        rows = math.ceil(len(paths) / cols)
        gap = 2
        sheet = Image.new("RGB", (cols * (thumb + gap) + gap, rows * (thumb + gap) + gap), (40, 40, 40))
        for i, p in enumerate(paths):
            with Image.open(p) as im:
                t = im.convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS)
            sheet.paste(t, (gap + (i % cols) * (thumb + gap), gap + (i // cols) * (thumb + gap)))
    out.write_bytes(encode_png(sheet))
    return out

"""The severity stage: score a set of images with the severity index against a normal-face network.

The images (a dataset zip, a network's seeds, or a synthesized dataset) are split into
``tasks`` contiguous ranges whose boundaries fall on whole scorer batches, so a split run scores
every image in the same batch as an unsplit one. With ``ctx.task`` set (one Slurm array task)
it scores its range; without (the whole stage locally, or the commit job after the array) it
scores whatever is missing, then writes the tables, the heat-map overlays, the summary plot and
the record. Scores are saved to the store every ``save_every_s`` and on a stop request (exit 75:
requeue), so a preempted task resumes at the first image it had not saved. A dataset's scores
go to the real-set cache (``severity.cache``) and are reused by every later stage or evaluation
with the same normal network and options.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.kinds.severity import SeverityStage

ALIGNMENT_SAMPLE = 32  # images compared with the generator's mean face before any optimisation
AGREEMENT = {"record": "agreement.json", "plot": "agreement.png"}  # with ratings: how the scores agree with them


def run(cfg: SeverityStage, ctx: StageContext) -> dict[str, str]:
    from cleftgan_hpc.metrics.compute import exact_fp32

    with exact_fp32():  # as evaluate measures: the same scores here and in evaluate's DISH (shared cache)
        return _run(cfg, ctx)


def task_ranges(count: int, tasks: int, batch: int) -> list[tuple[int, int]]:
    """``tasks`` contiguous ranges covering ``0 .. count - 1``, split at multiples of ``batch``
    (some are empty when there are more tasks than batches)."""
    blocks = -(-count // batch)
    bounds = [min(count, (k * blocks // tasks) * batch) for k in range(tasks + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(tasks)]


def open_images(cfg: SeverityStage, ctx: StageContext) -> Any:
    from cleftgan_hpc.severity.sources import DatasetImages, NetworkImages, open_synthesized
    from cleftgan_hpc.storage.base import sha256_file

    if cfg.dataset is not None:
        path = ctx.fetch(cfg.dataset)
        return DatasetImages(path, sha256_file(path))
    if cfg.network is not None:
        assert cfg.count is not None  # the config requires it
        path = ctx.fetch(cfg.network)
        return NetworkImages(path, sha256_file(path), cfg.first_seed, cfg.count, cfg.truncation_psi, ctx.device)
    assert cfg.synthesized is not None
    return open_synthesized(ctx.fetch(cfg.synthesized), ctx.store)


def load_index(cfg: SeverityStage, ctx: StageContext) -> Any:
    from cleftgan_hpc.metrics.lpips import load_lpips, save_tiny_lpips
    from cleftgan_hpc.severity.scorer import SeverityIndex

    lpips = None
    if cfg.lpips is not None:
        path = ctx.scratch / "demo_lpips.pt" if cfg.lpips == "demo" else ctx.fetch(cfg.lpips)
        if cfg.lpips == "demo":
            save_tiny_lpips(path)
        lpips = load_lpips(path, ctx.device)
    return SeverityIndex.from_file(ctx.fetch(cfg.normal_network), cfg.index, ctx.device, lpips=lpips)


def check_set(source: Any, index: Any, log: Any) -> None:
    """Everything that can be refused before any optimisation: size, channels, an empty set, and a
    warning when the images do not look aligned as the network's faces are."""
    from cleftgan_hpc.severity.scorer import ALIGNMENT_WARN, alignment

    if source.count < 1:
        raise CleftGanError(f"severity: {source.description} holds no images")
    index.check_images(source.resolution, source.channels, source.description)
    r = alignment(source.sample(ALIGNMENT_SAMPLE), index.mean_face())
    if r < ALIGNMENT_WARN:
        log.warning(
            f"severity: the images' mean correlates only {r:.2f} with the normal network's mean face: are they "
            "aligned and cropped as the network's training faces were (FFHQ alignment for the FFHQ networks; the "
            "preprocess stage does it)? The index compares pixels, so misaligned faces score high for that alone"
        )
    else:
        log.info(f"severity: alignment check passed (correlation with the network's mean face {r:.2f})")


def score_range(cfg: SeverityStage, ctx: StageContext, source: Any, index: Any, task: int,
                span: tuple[int, int]) -> np.ndarray:
    """The table [b - a, 5] of images ``a .. b - 1``, resuming from (and saving to) the store."""
    from cleftgan_hpc.metrics.partial import PartialResults
    from cleftgan_hpc.severity.series import score_into

    a, b = span
    identity = {"source": source.identity, "index": index.digest, "range": [a, b]}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    partial = PartialResults(ctx.store, ctx.key("progress", f"task-{task:05d}"), {"scores": digest}, cfg.save_every_s)
    if partial.done("scores"):
        ctx.log.info(f"severity task {task}: {min(partial.done('scores'), b - a)} of {b - a} images already scored")
    progress = ctx.progress(b - a, f"severity task {task} (images {a}..{b - 1})", "images")
    return score_into(partial, "scores", index, b - a, lambda done: source.batches(a + done, b, cfg.index.batch),
                      progress, ctx.should_stop)


def _run(cfg: SeverityStage, ctx: StageContext) -> dict[str, str]:
    from cleftgan_hpc.severity.cache import ScoreCache

    t0 = time.monotonic()
    source = open_images(cfg, ctx)
    index = load_index(cfg, ctx)
    check_set(source, index, ctx.log)
    o = cfg.index
    ctx.log.info(
        f"severity index of {source.count} images ({source.description}) on {ctx.device}: projection "
        f"{o.projection.steps} steps, adaptation {o.adaptation.steps} steps, batch {o.batch}, "
        f"erosion radius {index.erosion_radius}, score {o.reduce}"
    )
    ranges = task_ranges(source.count, cfg.tasks, o.batch)
    cache = ScoreCache(ctx.store) if source.cacheable_sha256 else None
    cached = cache.get(source.cacheable_sha256, index.digest, source.count) if cache else None
    if ctx.task is not None:
        if not 0 <= ctx.task < cfg.tasks:
            raise CleftGanError(f"severity: task {ctx.task} is outside 0..{cfg.tasks - 1}")
        if cached is not None:
            ctx.log.info("severity: this dataset's scores are in the cache; nothing to do")
        else:
            score_range(cfg, ctx, source, index, ctx.task, ranges[ctx.task])
        return {}  # the commit job records the outputs

    if cached is not None:
        ctx.log.info(f"severity: scores of this dataset from the cache ({source.count} images)")
        table, cache_state = cached, "hit"
    else:
        table = np.concatenate([score_range(cfg, ctx, source, index, k, r) for k, r in enumerate(ranges)])
        cache_state = None
        if cache is not None:
            cache.put(source.cacheable_sha256, index.digest, table, source.keys())
            cache_state = "stored"
    keys = source.keys()
    if len(keys) != len(table):
        raise CleftGanError(f"severity: {len(table)} scores for {len(keys)} images")
    outputs = write_outputs(cfg, ctx, source, index, table, keys)
    agreement, agreement_outputs = None, {}
    if cfg.ratings is not None:
        agreement = check_against_ratings(cfg, ctx, table[:, 0], keys)
        agreement_outputs = {"agreement": ctx.key(AGREEMENT["record"]), "agreement_plot": ctx.key(AGREEMENT["plot"])}
        outputs.update(agreement_outputs)
    record = {
        "images": {"count": int(source.count), "source": _source_field(cfg), **source.identity},
        "index": index.describe(),
        "index_digest": index.digest,
        "cache": cache_state,
        "statistics": _statistics(table[:, 0]),
        "agreement": agreement,
        "tasks": cfg.tasks,
        "files": {name: key.rsplit("/", 1)[-1] for name, key in outputs.items()},
        "seconds": round(time.monotonic() - t0, 1),
    }
    ctx.store.put_json(ctx.key(SeverityStage.outputs["record"]), record)
    ctx.store.delete_prefix(ctx.key("progress") + "/")
    ctx.log.info(
        f"severity: {source.count} images scored: median {record['statistics']['median']:.4g}, "
        f"max {record['statistics']['max']:.4g}"
    )
    return {name: ctx.key(filename) for name, filename in SeverityStage.outputs.items()} | agreement_outputs


def photo_to_image_names(report: Path) -> dict[str, str]:
    """{photo name: dataset image name} from a preprocess report.json."""
    try:
        accepted = json.loads(report.read_text())["accepted"]
        return {str(r["file"]): str(r["dataset_name"]) for r in accepted}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CleftGanError(f"severity: photo_names {report.name} is not a preprocess report ({e})") from None


def check_against_ratings(cfg: SeverityStage, ctx: StageContext, scores: np.ndarray,
                          keys: list[str]) -> dict[str, Any]:
    """Correlations of the scores with the ratings CSV, saved as agreement.json and agreement.png."""
    from cleftgan_hpc.severity.agreement import agreement, agreement_png, read_ratings

    assert cfg.ratings is not None
    ratings = read_ratings(ctx.fetch(cfg.ratings), cfg.rating_column)
    if cfg.photo_names is not None:
        to_image = photo_to_image_names(ctx.fetch(cfg.photo_names))
        ratings = {to_image[name]: value for name, value in ratings.items() if name in to_image}
    rated = [i for i, key in enumerate(keys) if key in ratings]
    ctx.log.info(f"severity: {len(rated)} of {len(keys)} scored images have a rating")
    x = np.array([ratings[keys[i]] for i in rated], dtype=np.float64)
    y = scores[rated].astype(np.float64)
    stats = {**agreement(y, x), "rating_column": cfg.rating_column}
    ctx.store.put_json(ctx.key(AGREEMENT["record"]), stats)
    ctx.store.put_bytes(ctx.key(AGREEMENT["plot"]), agreement_png(y, x, stats, cfg.rating_column))
    ctx.log.info(f"severity vs {cfg.rating_column}: Spearman {stats['spearman']:.3f}, "
                 f"Pearson {stats['pearson']:.3f} over {stats['pairs']} images")
    return stats


def _source_field(cfg: SeverityStage) -> dict[str, Any]:
    for name in ("dataset", "network", "synthesized"):
        if getattr(cfg, name) is not None:
            return {name: getattr(cfg, name)}
    return {}


def _statistics(scores: np.ndarray) -> dict[str, float]:
    return {"mean": float(scores.mean()), "median": float(np.median(scores)), "std": float(scores.std()),
            "min": float(scores.min()), "max": float(scores.max())}


def write_outputs(cfg: SeverityStage, ctx: StageContext, source: Any, index: Any, table: np.ndarray,
                  keys: list[str]) -> dict[str, str]:
    """The tables, the overlays and the summary; returns {name: key} of what was written."""
    from cleftgan_hpc.severity.scorer import COLUMNS

    names = SeverityStage.outputs
    written = {name: ctx.key(names[name]) for name in ("scores", "table")}
    ctx.store.put_bytes(written["scores"], table_csv(table, keys))
    buf = io.BytesIO()
    np.savez(buf, key=np.array(keys, dtype=str), index=np.arange(len(keys)),
             **{c: table[:, i] for i, c in enumerate(COLUMNS)})
    ctx.store.put_bytes(written["table"], buf.getvalue())
    parquet = table_parquet(table, keys)
    if parquet is not None:
        written["parquet"] = ctx.key("scores.parquet")
        ctx.store.put_bytes(written["parquet"], parquet)
    written.update(write_pictures(cfg, ctx, source, index, table, keys))
    return written


def table_csv(table: np.ndarray, keys: list[str]) -> bytes:
    from cleftgan_hpc.severity.scorer import COLUMNS

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["index", "key", *COLUMNS])
    for i, (key, row) in enumerate(zip(keys, table, strict=True)):
        w.writerow([i, key, *(f"{v:.9g}" for v in row)])
    return out.getvalue().encode()


def table_parquet(table: np.ndarray, keys: list[str]) -> bytes | None:
    """The table as Parquet, or None when pyarrow is not installed (scores.npz holds the same)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    from cleftgan_hpc.severity.scorer import COLUMNS

    columns = {"index": pa.array(np.arange(len(keys))), "key": pa.array(keys, pa.string()),
               **{c: pa.array(table[:, i]) for i, c in enumerate(COLUMNS)}}
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def picked(scores: np.ndarray, sample: int, extremes: int) -> list[tuple[str, int]]:
    """(label, index) of the images drawn: ``sample`` evenly spaced, the ``extremes`` highest and lowest."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    chosen = [(f"sample-{j:03d}", int(i)) for j, i in enumerate(np.unique(np.linspace(0, n - 1, min(sample, n)).round()
                                                                        .astype(int)))] if sample else []
    chosen += [(f"highest-{r + 1:02d}", int(i)) for r, i in enumerate(order[: min(extremes, n)])]
    chosen += [(f"lowest-{r + 1:02d}", int(i)) for r, i in enumerate(order[::-1][: min(extremes, n)])]
    return chosen


def write_pictures(cfg: SeverityStage, ctx: StageContext, source: Any, index: Any, table: np.ndarray,
                   keys: list[str]) -> dict[str, str]:
    """Overlays of the picked images (scored again, keeping their heat maps) and the summary plot."""
    import torch

    from cleftgan_hpc.severity.pictures import overlay_png, summary_png

    chosen = picked(table[:, 0], cfg.overlays, cfg.extremes)
    todo = sorted({i for _, i in chosen})
    maps: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if todo:
        images = torch.cat([next(iter(source.batches(i, i + 1, 1))) for i in todo])
        result = index.score(images, keep_maps=True)
        assert result.heat is not None and result.normalised is not None
        faces = images.permute(0, 2, 3, 1).numpy()
        maps = {i: (faces[j], result.normalised[j], result.heat[j]) for j, i in enumerate(todo)}
    vmax = max([float(h.max()) for _, _, h in maps.values()] + [1e-6])
    prefix = SeverityStage.outputs["heatmaps"]
    ctx.store.delete_prefix(ctx.key(prefix) + "/")  # no overlay of an earlier attempt's picks stays
    for label, i in chosen:
        face, normalised, heat = maps[i]
        title = f"{label}  {keys[i]}  score {table[i, 0]:.4g}  (heat scale 0..{vmax:.3g})"
        ctx.store.put_bytes(ctx.key(prefix, f"{label}-{_file_part(keys[i])}.png"),
                            overlay_png(face, normalised, heat, vmax, title))
    tiles = [(f"{label}: {table[i, 0]:.3g}", maps[i][0], maps[i][2]) for label, i in chosen
             if not label.startswith("sample")]
    summary = summary_png(table[:, 0], table[:, 1], tiles, vmax, f"severity index ({index.options.reduce})")
    ctx.store.put_bytes(ctx.key(SeverityStage.outputs["summary"]), summary)
    return {"heatmaps": ctx.key(prefix), "summary": ctx.key(SeverityStage.outputs["summary"])}


def _file_part(key: str) -> str:
    """An image key made safe for a file name (its extension dropped)."""
    stem = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:80] or "image"

"""The evaluate stage: FID, KID, PPL and DISH of a generator against the real dataset.

One pass generates the images (seeds first_seed.., z as the synthesize stage draws it) and
feeds each batch to the Inception network for FID/KID and to the severity model for DISH; a
second pass measures PPL. Per-image results are saved to the store every ``save_every_s``, so
a preempted run (SIGTERM/SIGUSR2: exit 75, requeue) resumes from there; every image is a pure
function of its index, so the resumed result equals an uninterrupted one.

With ``normal_network`` DISH uses the severity index (``cleftgan_hpc.severity``) instead of a
TorchScript model: real-set scores from the store's cache (made, resumably, on first use), and
the first ``dish.images`` generated images scored in their own resumable pass.

Writes ``metrics.json`` (values and their provenance) and ``report.png`` (sample grid, the
severity histograms, the path-length distribution).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.kinds.evaluate import EvaluateStage
from cleftgan_hpc.metrics.features import FeatureExtractor, load_feature_extractor, save_tiny_extractor
from cleftgan_hpc.metrics.lpips import LPIPSNet, load_lpips, save_tiny_lpips
from cleftgan_hpc.metrics.partial import PartialResults
from cleftgan_hpc.metrics.severity import SeverityModel, load_severity_model, save_demo_severity_model
from cleftgan_hpc.storage.base import sha256_file

GRID_IMAGES = 16


@dataclass
class Models:
    """The measuring networks the configured metrics need (None where not needed)."""

    extractor: FeatureExtractor | None = None  # fid, kid
    lpips: LPIPSNet | None = None  # ppl
    severity: SeverityModel | None = None  # dish, from a TorchScript model
    index: Any = None  # dish, from the severity index (a cleftgan_hpc.severity.SeverityIndex)

    def digests(self) -> dict[str, str]:
        named = {"feature_extractor": self.extractor, "lpips": self.lpips, "severity_model": self.severity}
        out = {k: m.digest for k, m in named.items() if m is not None}
        if self.index is not None:
            out["normal_network"] = self.index.network_sha256
            out["severity_index"] = self.index.digest
        return out


def load_models(cfg: EvaluateStage, ctx: StageContext, device: str) -> Models:
    """Load what the metrics need; 'demo' writes the project's small stand-in into scratch first."""

    def path_of(ref: str | None, demo_name: str, save_demo: Callable[[Path], object]) -> Path:
        assert ref is not None  # the config validator requires the model of every metric asked for
        if ref == "demo":
            path = ctx.scratch / demo_name
            save_demo(path)
            return path
        return ctx.fetch(ref)

    models = Models()
    wanted = set(cfg.metrics)
    if wanted & {"fid", "kid"}:
        models.extractor = load_feature_extractor(
            path_of(cfg.feature_extractor, "demo_extractor.pt", save_tiny_extractor), device
        )
    if "ppl" in wanted:
        models.lpips = load_lpips(path_of(cfg.lpips, "demo_lpips.pt", save_tiny_lpips), device)
    if "dish" in wanted and cfg.normal_network is not None:
        from cleftgan_hpc.severity.scorer import SeverityIndex

        lpips = models.lpips
        if lpips is None and cfg.lpips is not None:  # the index's perceptual losses use the same LPIPS file
            lpips = load_lpips(path_of(cfg.lpips, "demo_lpips.pt", save_tiny_lpips), device)
        models.index = SeverityIndex.from_file(ctx.fetch(cfg.normal_network), cfg.severity_index, device, lpips=lpips)
    elif "dish" in wanted:
        models.severity = load_severity_model(
            path_of(cfg.severity_model, "demo_severity.pt", save_demo_severity_model), device
        )
    return models


def label_rows(labels: np.ndarray | None, c_dim: int) -> np.ndarray | None:
    """The dataset's labels as [N, c_dim] float rows for a conditional generator (None otherwise)."""
    if c_dim == 0:
        return None
    if labels is None:
        raise CleftGanError(f"the network is conditional ({c_dim} classes) but the dataset has no labels")
    if labels.dtype.kind in "iu" and labels.ndim == 1:  # class indices; 2-D integer labels are rows already
        if labels.min() < 0 or labels.max() >= c_dim:
            raise CleftGanError(f"dataset labels span {labels.min()}..{labels.max()}; the network has 0..{c_dim - 1}")
        return np.eye(c_dim, dtype=np.float32)[labels]
    rows = labels.reshape(len(labels), -1).astype(np.float32)
    if rows.shape[1] != c_dim:
        raise CleftGanError(f"dataset labels have width {rows.shape[1]}, the network expects {c_dim}")
    return rows


@torch.no_grad()
def generate(G: Any, seeds: range, labels: np.ndarray | None, psi: float, device: str) -> torch.Tensor:
    """uint8 [N, C, H, W] images of ``seeds``, on ``device``; a conditional net gets a real label
    drawn per seed."""
    from cleftgan_hpc.metrics.features import images_to_uint8
    from cleftgan_hpc.model.generate import seed_to_z
    from cleftgan_hpc.synthesis.generate import LABEL_STREAM  # a label per seed, drawn as synthesis draws one

    z = torch.from_numpy(np.concatenate([seed_to_z(s, G.z_dim) for s in seeds])).float().to(device)
    c = None
    if labels is not None:
        pick = [int(np.random.default_rng([s, LABEL_STREAM]).integers(len(labels))) for s in seeds]
        c = torch.from_numpy(labels[pick]).to(device)
    return images_to_uint8(G(z, c, truncation_psi=psi))  # stays on the device for the measuring networks


def series_identities(
    cfg: EvaluateStage, network_sha: str, labels: np.ndarray | None, models: Models, dataset_sha: str = ""
) -> dict[str, str]:
    """For each saved series, a digest of everything its rows depend on, so that progress made for
    another network, model or option is never reused and a change to one series keeps the
    others' work (num_images, ppl.samples and the reductions to numbers are not in it)."""
    images = {
        "network": network_sha, "first_seed": cfg.first_seed, "psi": cfg.truncation_psi, "batch": cfg.batch,
        "labels": None if labels is None else hashlib.sha256(labels.tobytes()).hexdigest(),
    }
    parts = {
        "features": {**images, "extractor": models.extractor.digest if models.extractor else None},
        "severity": {**images, "severity": models.severity.digest if models.severity else None,
                     "index": models.index.digest if models.index is not None else None},
        "real_severity": {"dataset": dataset_sha, "index": models.index.digest if models.index is not None else None},
        "path_lengths": {
            "network": network_sha, "labels": images["labels"], "batch": cfg.batch, "seed": cfg.seed,
            "lpips": models.lpips.digest if models.lpips else None, **cfg.ppl.model_dump(exclude={"samples"}),
        },
    }
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest() for k, v in parts.items()}


def resume_points(partial: PartialResults, names: list[str], total: int, step: int) -> dict[str, int]:
    """Where each series goes on: its length, down to a multiple of ``step`` (so batches start at
    the samples an uninterrupted run starts them at), at most ``total``; rows past it are cut.
    Series computed in one pass resume from the smallest and skip the rows they already have."""
    points = {}
    for n in names:
        start = min(partial.done(n), total)
        if start < total:
            start -= start % step
        partial.truncate(n, start)
        points[n] = start
    return points


def check_images_match(G: Any, real: Any, log: Any) -> dict[str, int]:
    """Refuse a network whose images cannot be compared with the dataset's; warn when only the
    size differs (the measuring networks resize, but the comparison is then less meaningful)."""
    if G.img_channels != real.channels:
        raise CleftGanError(
            f"the network makes {G.img_channels}-channel images, the dataset has {real.channels}: "
            "evaluate it against a dataset of its own kind"
        )
    if G.img_resolution != real.resolution:
        log.warning(
            f"the network makes {G.img_resolution}px images, the dataset's are {real.resolution}px: "
            "the measuring networks resize both, but the numbers are not those of a like-for-like comparison"
        )
    return {"network_px": int(G.img_resolution), "dataset_px": int(real.resolution)}


def run(cfg: EvaluateStage, ctx: StageContext) -> dict[str, str]:
    from cleftgan_hpc.metrics.compute import exact_fp32

    with exact_fp32():  # TF32 would swamp PPL's small steps and shift FID
        return _run(cfg, ctx)


def _run(cfg: EvaluateStage, ctx: StageContext) -> dict[str, str]:
    from cleftgan_hpc.data.dataset import Dataset
    from cleftgan_hpc.metrics.cache import FeatureStatsCache
    from cleftgan_hpc.metrics.compute import fid_kid, uint8_batches
    from cleftgan_hpc.metrics.dish import dish
    from cleftgan_hpc.severity.series import real_set_scores, score_into
    from cleftgan_hpc.synthesis.generate import load_generator, network_info

    t0 = time.monotonic()
    device = ctx.device
    network_path, dataset_path = ctx.fetch(cfg.network), ctx.fetch(cfg.dataset)
    network_sha, dataset_sha = sha256_file(network_path), sha256_file(dataset_path)
    G = load_generator(network_path, device)
    real = Dataset(dataset_path)
    sizes = check_images_match(G, real, ctx.log)
    labels = label_rows(real.labels, G.c_dim)
    models = load_models(cfg, ctx, device)
    wanted = set(cfg.metrics)
    if models.index is not None:  # before any work: the index compares pixels of like images
        models.index.check_images(real.resolution, real.channels, "the dataset's images")
        models.index.check_images(G.img_resolution, G.img_channels, "the evaluated network's images")
    partial = PartialResults(
        ctx.store, ctx.key("progress"), series_identities(cfg, network_sha, labels, models, dataset_sha),
        cfg.save_every_s,
    )
    if partial.resumed:
        ctx.log.info(
            "resuming: "
            + ", ".join(f"{n} {partial.done(n)}" for n in ("features", "severity", "path_lengths") if partial.done(n))
        )

    # -- the real set: Inception statistics (cached in the store, shared with finetune's snapshots)
    # and severity scores
    real_stats = None
    if models.extractor is not None:
        extractor = models.extractor
        real_stats, hit = FeatureStatsCache(ctx.store).get_or_compute(
            dataset_sha, extractor.digest, lambda: extractor.features(uint8_batches(iter(real), cfg.batch))
        )
        ctx.log.info(f"real-set features {'from the cache' if hit else 'computed and cached'} ({real.count} images)")
    real_scores = None
    if models.severity is not None:
        real_scores = models.severity.scores_of(uint8_batches(iter(real), cfg.batch))
    index_record = None
    if models.index is not None:
        real_scores, index_record = real_set_scores(models.index, real, dataset_sha, partial, ctx)

    # -- pass 1: each batch of generated images is made once, for features and severity scores
    series = [n for n, m in (("features", models.extractor), ("severity", models.severity)) if m is not None]
    if series:
        points = resume_points(partial, series, cfg.num_images, cfg.batch)
        if "severity" in points:  # only the first dish_images are scored
            points["severity"] = resume_points(partial, ["severity"], cfg.dish_images, cfg.batch)["severity"]
        start = min(points.values())
        progress = ctx.progress(cfg.num_images, "evaluate: generated images", "images")
        progress.update(start)
        for first in range(start, cfg.num_images, cfg.batch):
            _stop_if_asked(ctx, partial)
            seeds = range(cfg.first_seed + first, cfg.first_seed + min(first + cfg.batch, cfg.num_images))
            images = generate(G, seeds, labels, cfg.truncation_psi, device)
            if models.extractor is not None and first >= points["features"]:
                partial.extend("features", models.extractor.features([images]))
            if models.severity is not None and points["severity"] <= first < cfg.dish_images:
                partial.extend("severity", models.severity.scores(images[: cfg.dish_images - first]))
            partial.maybe_save()
            progress.update(len(seeds))
        progress.close()

    # -- pass 1b: the severity index of the first dish_images generated images (hundreds of passes each)
    if models.index is not None:
        step = models.index.options.batch

        def generated(start: int) -> Any:
            for first in range(start, cfg.dish_images, step):
                seeds = range(cfg.first_seed + first, cfg.first_seed + min(first + step, cfg.dish_images))
                yield generate(G, seeds, labels, cfg.truncation_psi, device).cpu()

        progress = ctx.progress(cfg.dish_images, "evaluate: severity index of generated images", "images")
        score_into(partial, "severity", models.index, cfg.dish_images, generated, progress, ctx.should_stop)

    # -- pass 2: perceptual path lengths
    if models.lpips is not None:
        from cleftgan_hpc.metrics.ppl import PPLSettings, path_lengths

        settings = PPLSettings(**cfg.ppl.model_dump(exclude={"samples"}))
        chunk = cfg.batch * 8  # pairs between saves
        done = resume_points(partial, ["path_lengths"], cfg.ppl.samples, chunk)["path_lengths"]
        progress = ctx.progress(cfg.ppl.samples, "evaluate: PPL", "pairs")
        progress.update(done)
        while done < cfg.ppl.samples:
            n = min(chunk, cfg.ppl.samples - done)
            try:  # it checks for a stop request between batches: a chunk takes too long to wait for
                lengths = path_lengths(
                    G, models.lpips, n, settings, first=done, batch=cfg.batch, seed=cfg.seed, device=device,
                    labels=labels, on_samples=progress.update, should_stop=ctx.should_stop,
                )
            except StopRequested:
                partial.save()
                raise
            partial.extend("path_lengths", lengths)
            partial.maybe_save()
            done += n
        progress.close()
    partial.save()  # everything computed: a crash while writing the report costs nothing
    for name, total in (("features", cfg.num_images), ("severity", cfg.dish_images), ("path_lengths", cfg.ppl.samples)):
        if partial.done(name) not in (0, total):  # a bookkeeping bug must not pass as a result
            raise CleftGanError(f"evaluate: {name} has {partial.done(name)} rows, expected {total}")

    # -- the numbers
    values: dict[str, float] = {}
    details: dict[str, Any] = {"sizes": sizes}
    if real_stats is not None:
        fk = fid_kid(real_stats, partial.array("features"), cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
        values.update({k: float(fk[k]) for k in ("fid", "kid") if k in wanted})
    dish_result = None
    if real_scores is not None:
        fake_scores = partial.array("severity")
        fake_scores = fake_scores[:, 0] if fake_scores.ndim == 2 and fake_scores.shape[1] > 1 else fake_scores
        dish_result = dish(
            real_scores, fake_scores, bins=cfg.dish.bins, value_range=cfg.dish.range,
            divergence=cfg.dish.divergence, smoothing=cfg.dish.smoothing,
        )
        values["dish"] = float(dish_result.value)
        details["dish"] = {**dish_result.to_json(), "images": cfg.dish_images,
                           "scorer": "severity_index" if models.index is not None else "severity_model"}
        if index_record is not None:
            details["severity_index"] = index_record
    lengths = None
    if models.lpips is not None:
        from cleftgan_hpc.metrics.ppl import ppl_from_lengths

        lengths = partial.array("path_lengths")
        values["ppl"] = float(ppl_from_lengths(lengths))
        details["ppl"] = {**cfg.ppl.model_dump(mode="json"), "median": float(np.median(lengths))}
    values = {m: values[m] for m in cfg.metrics}  # in the order asked for
    ctx.log.info("evaluate: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    record = {
        "metrics": values,
        "network": {"source": cfg.network, "sha256": network_sha, **network_info(G)},
        "dataset": {"source": cfg.dataset, "sha256": dataset_sha, "images": real.count},
        "generated": {"images": cfg.num_images, "first_seed": cfg.first_seed, "truncation_psi": cfg.truncation_psi},
        "models": models.digests(),
        "kid": {"subsets": cfg.kid_subsets, "subset_size": cfg.kid_subset_size} if "kid" in wanted else None,
        **details,
        "seconds": round(time.monotonic() - t0, 1),
        "resumed": partial.resumed,
    }
    ctx.store.put_json(ctx.key(EvaluateStage.outputs["metrics"]), record)
    grid = generate(G, range(cfg.first_seed, cfg.first_seed + GRID_IMAGES), labels, cfg.truncation_psi, device)
    ctx.store.put_bytes(ctx.key(EvaluateStage.outputs["report"]), report_png(values, grid, dish_result, lengths))
    partial.discard()
    return {name: ctx.key(filename) for name, filename in EvaluateStage.outputs.items()}


def _stop_if_asked(ctx: StageContext, partial: PartialResults) -> None:
    if ctx.should_stop():
        partial.save()
        raise StopRequested("evaluate: progress saved; run again to resume")


def report_png(values: dict[str, float], grid: torch.Tensor, dish_result: Any, lengths: np.ndarray | None) -> bytes:
    """One PNG people can read at a glance: the metric values, sample images, and the DISH and PPL
    distributions behind their single numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cleftgan_hpc.model.generate import make_grid

    panels = 1 + (dish_result is not None) + (lengths is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    tiles = grid.permute(0, 2, 3, 1).cpu().numpy()  # [N, H, W, C]
    image = make_grid(tiles, cols=math.ceil(math.sqrt(len(tiles))))
    ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray" if image.shape[2] == 1 else None)
    ax.set_title("generated (first seeds)")
    ax.axis("off")
    k = 1
    if dish_result is not None:
        ax = axes[0][k]
        edges = np.asarray(dish_result.edges)
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        ax.bar(centres, dish_result.real_hist, width=width, alpha=0.5, label="real")
        ax.bar(centres, dish_result.fake_hist, width=width, alpha=0.5, label="generated")
        ax.set_title(f"severity histograms: DISH ({dish_result.divergence}) {dish_result.value:.4f}")
        ax.set_xlabel("severity score")
        ax.set_ylabel("fraction of images")
        ax.legend()
        k += 1
    if lengths is not None:
        ax = axes[0][k]
        positive = lengths[lengths > 0]
        from cleftgan_hpc.metrics.ppl import kept_range

        lo, hi = kept_range(lengths)
        if len(positive) and positive.max() > positive.min():
            bins = np.geomspace(positive.min(), positive.max(), 40)
            ax.hist(positive, bins=bins)
            ax.set_xscale("log")
        else:
            ax.hist(lengths, bins=40)
        ax.axvspan(lo, hi, alpha=0.1, color="green", label="kept (1st-99th percentile)")
        ax.set_title(f"path lengths: PPL {values.get('ppl', float('nan')):.4g}")
        ax.set_xlabel("LPIPS / epsilon^2")
        ax.legend()
    fig.suptitle("  ".join(f"{k.upper()} {v:.4g}" for k, v in values.items()))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

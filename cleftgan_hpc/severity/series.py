"""Scoring a long series of images into saved progress (``metrics.partial.PartialResults``), so a
stopped job resumes at the first batch it had not saved, and every batch holds the same images
as in an uninterrupted run (batched arithmetic may round differently in another grouping)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.metrics.partial import PartialResults


def resume_point(partial: PartialResults, name: str, total: int, batch: int) -> int:
    """How many of ``total`` rows of ``name`` to keep: whole batches (all rows once complete)."""
    done = min(partial.done(name), total)
    if done < total:
        done -= done % batch
    partial.truncate(name, done)
    return done


def score_into(
    partial: PartialResults,
    name: str,  # the series: rows are the scorer's table rows (COLUMNS)
    index: Any,  # a SeverityIndex
    total: int,
    batches_from: Callable[[int], Iterable[torch.Tensor]],  # uint8 batches of ``options.batch`` images from a row
    progress: Any,  # a Progress: updated with every batch
    should_stop: Callable[[], bool],
) -> np.ndarray:
    """Score rows ``done .. total - 1`` of ``name`` (saving as ``partial`` is set to), and return the
    whole table [total, 5]. A stop request saves what is done and raises StopRequested."""
    done = resume_point(partial, name, total, index.options.batch)
    progress.update(done)
    for images in batches_from(done) if done < total else ():
        try:
            if should_stop():
                raise StopRequested("severity index: stopped between batches")
            result = index.score(images, should_stop=should_stop)
        except StopRequested as stop:
            partial.save()
            raise StopRequested(f"severity index: {partial.done(name)} of {total} scores saved; run again to resume") \
                from stop
        partial.extend(name, result.table())
        partial.maybe_save()
        progress.update(len(images))
    partial.save()
    progress.close()
    if partial.done(name) != total:  # a bookkeeping bug must not pass as a result
        raise RuntimeError(f"severity index: {partial.done(name)} scores in {name!r}, expected {total}")
    return partial.array(name) if total else np.zeros((0, 5))


def real_set_scores(
    index: Any, real: Any, dataset_sha: str, partial: PartialResults, ctx: StageContext
) -> tuple[np.ndarray, dict[str, Any]]:
    """A real dataset's scores (``real``: a ``data.dataset.Dataset``) and a record of them: from the
    store's cache, or scored (resumable through the ``real_severity`` series of ``partial``) and
    cached for every later evaluation and severity stage."""
    from cleftgan_hpc.metrics.compute import uint8_batches
    from cleftgan_hpc.severity.cache import ScoreCache

    cache = ScoreCache(ctx.store)
    table = cache.get(dataset_sha, index.digest, real.count)
    state = "from the cache"
    if table is None:
        def batches(start: int) -> Iterable[torch.Tensor]:
            return uint8_batches((real[i] for i in range(start, real.count)), index.options.batch)

        progress = ctx.progress(real.count, "severity index of the real images", "images")
        table = score_into(partial, "real_severity", index, real.count, batches, progress, ctx.should_stop)
        cache.put(dataset_sha, index.digest, table, list(real.names))
        state = "computed and cached"
    ctx.log.info(f"severity index of the real set {state} ({real.count} images)")
    return table[:, 0], {**index.describe(), "digest": index.digest, "real_scores": state,
                         "real_mean": float(table[:, 0].mean()), "real_projection_loss": float(table[:, 1].mean())}

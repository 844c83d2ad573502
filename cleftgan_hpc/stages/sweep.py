"""The sweep stage: Ray Tune over fine-tune settings; promotes the best trial's network.

Writes results.csv and results.json (every trial's config, metric history and status), a PNG
of the metric against kimg for all trials, and the best trial's network as this stage's
``network`` output, so a later finetune or synthesize stage can take ``network: stage:<sweep>``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from typing import Any

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.kinds.sweep import SweepStage


def best_of(results: dict[str, Any], exists: Callable[[str], bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trial, history entry) with the lowest metric over every trial's snapshots whose
    checkpoint is still in the store."""
    metric = results["metric"]
    best: tuple[float, dict[str, Any], dict[str, Any]] | None = None
    for trial in results["trials"]:
        for h in trial["history"]:
            if not h.get("checkpoint_key") or not exists(h["checkpoint_key"]):
                continue
            value = h.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value) and (best is None or value < best[0]):
                best = (value, trial, h)
    if best is None:
        raise CleftGanError(f"no trial reported a finite {metric}; see the trial logs under the sweep's trials/")
    return best[1], best[2]


def results_csv(results: dict[str, Any]) -> str:
    keys = sorted({k for t in results["trials"] for k in t["config"]})
    metric = results["metric"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "status", *keys, "kimg", metric, f"best_{metric}"])
    for t in results["trials"]:
        values = [h[metric] for h in t["history"] if metric in h]
        last = t["history"][-1] if t["history"] else {}
        w.writerow(
            [
                t["trial"],
                t["status"],
                *[t["config"].get(k) for k in keys],
                last.get("kimg"),
                last.get(metric),
                min(values) if values else None,
            ]
        )
    return buf.getvalue()


def plot_png(results: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["metric"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in results["trials"]:
        pts = [(h["kimg"], h[metric]) for h in t["history"] if metric in h and "kimg" in h]
        if pts:
            label = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["config"].items())
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=label[:60])
    ax.set_xlabel("kimg")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by trial (stopped lines: early-stopped trials)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def run(cfg: SweepStage, ctx: StageContext) -> dict[str, str]:
    from cleftgan_hpc.stages.finetune import check_max_images, export_checkpoint
    from cleftgan_hpc.stages.sweep_tune import run_sweep, trial_config

    if cfg.base.max_images is not None:  # before any trial starts, not once in each
        from cleftgan_hpc.data.dataset import open_dataset

        check_max_images(ctx.stage, cfg.base.max_images, len(open_dataset(ctx.fetch(cfg.dataset))), cfg.dataset)
    results = run_sweep(cfg, ctx)
    outputs = {name: ctx.key(fname) for name, fname in SweepStage.outputs.items()}
    best_trial, best = best_of(results, ctx.store.exists)
    results["best"] = {"trial": best_trial["trial"], "config": best_trial["config"], **best}
    ctx.store.put_text(outputs["results_json"], json.dumps(results, indent=2, default=str) + "\n")
    ctx.store.put_text(outputs["results_csv"], results_csv(results))
    ctx.store.put_bytes(outputs["plot"], plot_png(results))
    ctx.log.info(
        f"best: trial {best_trial['trial']} {best_trial['config']} with {results['metric']} "
        f"{best[results['metric']]:.4g} at kimg {best['kimg']:.2f}"
    )
    export_checkpoint(trial_config(cfg, best_trial["config"], 0), ctx, best["checkpoint_key"], outputs["network"])
    return outputs

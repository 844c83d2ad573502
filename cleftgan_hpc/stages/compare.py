"""The compare stage: one table and one figure of the metrics of every combination of a grid.

It reads the run's stored spec to find the instances of the evaluate stage it gathers, the
network each one measured (a finetune or sweep instance, typically), and the settings that
differ between them (the grid's axes, whatever they are named), then each instance's
metrics.json. Rows are the combinations, columns the varying settings and the metrics; the
figure has one panel per metric with the paper's own figure drawn where the paper gives it.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.errors import CleftGanError, ObjectNotFound
from cleftgan_hpc.jobspec.grid import base_name
from cleftgan_hpc.jobspec.load import parse_spec
from cleftgan_hpc.jobspec.models import stage_ref
from cleftgan_hpc.jobspec.stages import CompareStage
from cleftgan_hpc.layout import join_key, run_prefix, stage_prefix

METRICS = ("fid", "kid", "ppl", "dish")
# What the CleftGAN paper reports for StyleGAN3-t with bgc augmentation on all 514 photos.
PAPER = {"fid": 21.03, "ppl": 16.43}
PAPER_LABEL = "paper: StyleGAN3-t, bgc, 514 images"


def run(cfg: CompareStage, ctx: StageContext) -> dict[str, str]:
    spec_key = join_key(run_prefix(ctx.run_id), "spec.yaml")
    spec = parse_spec(ctx.store.get_text(spec_key), file=ctx.store.uri(spec_key), interpolate=False).spec
    gathered = cfg.evaluation_stages
    names = [n for g in gathered for n in spec.stages if base_name(n) == g]
    missing = [g for g in gathered if not any(base_name(n) == g for n in names)]
    if missing:
        raise CleftGanError(f"no stage {missing[0]!r} in run {ctx.run_id} to compare")
    settings = {n: _settings(spec, n) for n in names}
    varying = _varying(list(settings.values()))
    rows = []
    for n in names:
        values = _metrics(ctx, n)
        # one evaluate stage: a row is its combination, [stylegan2,bgc]; several: the instance's whole name
        label = n[len(gathered[0]):] or n if len(gathered) == 1 else n
        rows.append({"combination": label, **{k: _short(settings[n].get(k)) for k in varying},
                     **{m: values.get(m) for m in METRICS}})
    metrics = [m for m in METRICS if any(r[m] is not None for r in rows)]
    columns = ["combination", *varying, *metrics]
    ctx.store.put_text(ctx.key(CompareStage.outputs["table"]), _csv(rows, columns))
    ctx.store.put_text(ctx.key(CompareStage.outputs["markdown"]), _markdown(rows, columns, cfg.paper_figures))
    ctx.store.put_bytes(ctx.key(CompareStage.outputs["figure"]), _figure(rows, metrics, cfg.paper_figures))
    ctx.log.info(f"compared {len(rows)} combinations of {', '.join(gathered)} on {', '.join(metrics) or 'no metrics'}; "
                 f"settings that vary: {', '.join(varying) or 'none'}")
    return {name: ctx.key(file) for name, file in CompareStage.outputs.items()}


def _settings(spec: Any, name: str) -> dict[str, Any]:
    """The evaluate instance's own settings and those of the stage whose network it measured."""
    stage = spec.stages[name]
    out = {f"eval.{k}": v for k, v in stage.model_dump(mode="json", exclude={"needs", "resources"}).items()}
    ref = stage_ref(getattr(stage, "network", "") or "")
    if ref and ref[0] in spec.stages:
        source = spec.stages[ref[0]].model_dump(mode="json", exclude={"needs", "resources"})
        out.update({k: v for k, v in source.items() if not isinstance(v, (dict, list))})
        out["kind"] = source.get("kind")
    return out


def _varying(settings: list[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1 and not k.startswith("eval.network")
            and k not in ("dataset", "eval.dataset")]


def _short(value: Any) -> Any:
    """A path by its file name (the networks a linked grid axis sets: stylegan2-ffhq-1024x1024.pkl)."""
    if isinstance(value, str) and "/" in value and not value.startswith("stage:"):
        return value.rstrip("/").rsplit("/", 1)[-1] or value
    return value


def _metrics(ctx: StageContext, name: str) -> dict[str, float]:
    prefix = stage_prefix(ctx.run_id, name)
    try:
        result = ctx.store.get_json(join_key(prefix, "result.json"))
        record = ctx.store.get_json(result["outputs"]["metrics"])
    except (ObjectNotFound, KeyError, TypeError, ValueError) as exc:
        raise CleftGanError(f"stage {name} has no readable metrics.json ({exc}); run it first") from None
    return {k: float(v) for k, v in (record.get("metrics") or {}).items() if isinstance(v, (int, float))}


def _text(v: Any) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    w.writerows([[_text(r[c]) for c in columns] for r in rows])
    return buf.getvalue()


def _markdown(rows: list[dict[str, Any]], columns: list[str], paper: bool) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_text(r[c]) for c in columns) + " |" for r in rows]
    if paper:
        shown = ", ".join(f"{k.upper()} {v}" for k, v in PAPER.items() if k in columns)
        if shown:
            lines += ["", f"The paper reports {shown} for StyleGAN3-t with bgc augmentation on all 514 photos."]
    return "\n".join(lines) + "\n"


def _figure(rows: list[dict[str, Any]], metrics: list[str], paper: bool) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = max(1, len(metrics))
    fig, axes = plt.subplots(1, panels, figsize=(4 + 2.2 * panels, 0.5 * len(rows) + 2), squeeze=False)
    labels = [r["combination"] for r in rows]
    for ax, m in zip(axes[0], metrics or ["(no metrics)"], strict=False):
        values = [r.get(m) if r.get(m) is not None else float("nan") for r in rows]
        ax.barh(range(len(rows)), values, color="#4c72b0")
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(m.upper())
        if paper and m in PAPER:
            ax.axvline(PAPER[m], color="#c44e52", linestyle="--", label=PAPER_LABEL)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

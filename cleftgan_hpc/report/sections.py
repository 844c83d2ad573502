"""The report's sections for the stages that make data and train: demo_data, preprocess, finetune.

Each is ``section(view, reader) -> Html``: the stage's key outputs as far as they exist. What
cannot be read is left to the reader's notes, which the page lists under the section.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from cleftgan_hpc.report.page import Html, figure, fmt, join, line_chart, note, pairs, table, tag
from cleftgan_hpc.report.read import Reader
from cleftgan_hpc.report.view import StageView

MAX_ROWS = 300  # rows of a file list before it is cut short
GRID_STRIP = 12  # sample grids shown over kimg


def file_rows(items: list[Any], fields: tuple[str, ...]) -> list[list[Any]]:
    return [[x.get(f) for f in fields] for x in items[:MAX_ROWS] if isinstance(x, dict)]


def cut(items: list[Any]) -> Html:
    if len(items) <= MAX_ROWS:
        return Html()
    return note(f"... and {len(items) - MAX_ROWS} more (the full list is in the JSON)")


def demo_data(v: StageView, r: Reader) -> Html:
    images = sorted(i.key for i in r.list(v.output("images") + "/"))
    if not images:
        return note("no images written yet") if not v.done else Html()
    pics = [p for p in (r.picture(k, 96, photo=True) for k in images[:8]) if p is not None]
    strip = tag("div", join(figure(p, k.rsplit("/", 1)[-1], v.href(k), 96) for p, k in zip(pics, images, strict=False)),
                class_="strip")
    return note(f"{len(images)} toy faces drawn (no patient data); the first {len(pics)}:") + strip


def preprocess(v: StageView, r: Reader) -> Html:
    out = []
    report = r.json(v.output("report"))
    if report is not None:
        c = report.get("counts") if isinstance(report.get("counts"), dict) else {}
        out.append(pairs([(k, c.get(k)) for k in ("found", "accepted", "rejected", "duplicates", "ignored")]
                         + [("resolution", report.get("resolution")), ("background", report.get("background"))]))
    sheet_key = v.output("contact_sheet")
    sheet = r.picture(sheet_key, photo=True)
    if sheet is not None:
        out.append(tag("h3", "Contact sheet: the accepted photos, aligned")
                   + figure(sheet, "click for full size", v.href(sheet_key)))
    if report is None:
        return join(out)
    rejected = [x for x in report.get("rejected") or [] if isinstance(x, dict)]
    out.append(tag("h3", f"Rejected photos ({len(rejected)})"))
    if rejected:
        reasons = Counter(re.sub(r"\d+(\.\d+)?", "N", str(x.get("reason"))) for x in rejected)
        out.append(table(["reason (numbers as N)", "photos"], reasons.most_common()))
        out.append(tag("details", tag("summary", "every rejected photo and why")
                       + table(["file", "reason"], file_rows(rejected, ("file", "reason"))) + cut(rejected)))
    else:
        out.append(note("none"))
    duplicates = [x for x in report.get("duplicates") or [] if isinstance(x, dict)]
    if duplicates:
        out.append(tag("details", tag("summary", f"near-duplicates dropped ({len(duplicates)})")
                       + table(["file", "duplicate of", "hash distance"],
                               file_rows(duplicates, ("file", "duplicate_of", "distance"))) + cut(duplicates)))
    ignored = [x for x in report.get("ignored") or [] if isinstance(x, dict)]
    if ignored:
        out.append(tag("details", tag("summary", f"other files ignored ({len(ignored)})")
                       + table(["file", "why"], file_rows(ignored, ("file", "reason"))) + cut(ignored)))
    return join(out)


def _grid_kimg(key: str) -> float | None:
    m = re.search(r"grid-(\d+)\.png$", key)
    return int(m.group(1)) / 1000 if m else None


def _evenly(items: list[Any], n: int) -> list[Any]:
    """At most ``n`` of ``items``, evenly spaced, the first and the last among them."""
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _series(records: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(float(s["kimg"]), float(s[key])) for s in records
            if isinstance(s.get("kimg"), (int, float)) and isinstance(s.get(key), (int, float))]


def finetune(v: StageView, r: Reader) -> Html:
    out = []
    stats = r.jsonl(v.output("stats")) or []
    metrics = r.jsonl(v.key("metrics.jsonl")) if v.cfg("metrics") else None
    latest = r.json(v.key("checkpoints", "latest.json")) if not v.done else None
    kimg = stats[-1].get("kimg") if stats else None
    facts: list[tuple[Any, Any]] = [("trained", f"{fmt(kimg)} of {fmt(v.cfg('kimg'))} kimg" if kimg is not None
                                     else "no tick logged yet")]
    if stats and isinstance(stats[-1].get("augment_p"), (int, float)):
        facts.append(("augment p now", stats[-1]["augment_p"]))
    if latest is not None:
        facts.append(("last checkpoint", f"step {latest.get('step')}"))
    out.append(pairs(facts))

    curves_key = v.output("curves")
    curves = r.picture(curves_key)
    if curves is not None:
        out.append(tag("h3", "Training curves") + figure(curves, "losses, D scores, R1, augment p, metrics",
                                                         v.href(curves_key)))
    grids = sorted((k for k in (i.key for i in r.list(v.key("samples") + "/grid-")) if _grid_kimg(k) is not None),
                   key=lambda k: _grid_kimg(k) or 0)
    if grids:
        shown = [(k, r.picture(k, 256, photo=True)) for k in _evenly(grids, GRID_STRIP)]
        strip = join(figure(p, f"kimg {_grid_kimg(k):.2f}", v.href(k), 224) for k, p in shown if p is not None)
        out.append(tag("h3", f"Sample grids over training ({len(grids)} snapshots, fixed seeds)")
                   + tag("div", strip, class_="strip"))
    elif v.done:
        out.append(note("no sample grids in the store"))
    p = _series(stats, "augment_p")
    if p:
        out.append(tag("h3", "ADA: augmentation probability p")
                   + line_chart({"p": p}, title="augment p", xlabel="kimg")
                   + note(f"ADA target {fmt(v.cfg('ada_target'))}: p rises while D is over-confident on the reals"
                          if v.cfg("augment_p") is None else f"p fixed at {fmt(v.cfg('augment_p'))}"))
    if metrics:
        out.append(_metrics(v, metrics))
    out.append(_tensorboard(v, r))
    return join(out)


def _metrics(v: StageView, metrics: list[dict[str, Any]]) -> Html:
    names = [n for n in (v.cfg("metrics") or []) if any(n in m for m in metrics)]
    rows = [[m.get("kimg"), *[m.get(n) for n in names]] for m in metrics]
    best = min((m for m in metrics if isinstance(m.get(names[0]), (int, float)) and math.isfinite(m[names[0]])),
               key=lambda m: m[names[0]], default=None) if names else None
    chart = line_chart({n: _series(metrics, n) for n in names}, title="metrics at snapshots", xlabel="kimg")
    provenance = (f"Each snapshot: {fmt(v.cfg('metric_samples'))} images from G_ema against the training set "
                  f"({v.cfg('dataset')}), features from {v.cfg('feature_extractor')!s}"
                  + (f"; lowest {names[0]} {fmt(best[names[0]])} at kimg {fmt(best.get('kimg'))}." if best else "."))
    return tag("h3", "Metrics") + table(["kimg", *names], rows) + chart + note(provenance)


def _tensorboard(v: StageView, r: Reader) -> Html:
    files = [i for i in r.list(v.key("tensorboard") + "/") if "tfevents" in i.key]
    if not files:
        return Html()
    uri = r.store.uri(v.key("tensorboard"))
    command = (f"tensorboard --logdir {uri[len('file://'):]}" if uri.startswith("file://")
               else f"aws s3 sync {uri} ./tb   # or any S3 client\ntensorboard --logdir ./tb")
    return (tag("h3", "TensorBoard")
            + note(f"{len(files)} event file(s) (one per attempt), {sum(i.size for i in files) / 1e6:.1f} MB:")
            + tag("pre", command, class_="log"))

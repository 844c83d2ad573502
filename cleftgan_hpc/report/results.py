"""The report's sections for the stages that search, make datasets and measure: sweep, synthesize, evaluate."""

from __future__ import annotations

import io
import math
from typing import Any

from cleftgan_hpc.layout import join_key
from cleftgan_hpc.report.page import Html, figure, fmt, join, note, pairs, table, tag
from cleftgan_hpc.report.read import Reader, encode
from cleftgan_hpc.report.view import StageView

GRID_SAMPLES = 16  # images of a synthesized dataset shown, from its first shard
TILE = 96


def sweep(v: StageView, r: Reader) -> Html:
    out = []
    results = r.json(v.output("results_json")) if v.settled else None
    if results is None:
        trials = sorted({i.key.split("/trials/", 1)[1].split("/", 1)[0] for i in r.list(v.key("trials") + "/")})
        out.append(note(f"{len(trials)} trial(s) started so far" + (f": {', '.join(trials[:20])}" if trials else "")))
    else:
        metric = str(results.get("metric"))
        trials = [t for t in results.get("trials") or [] if isinstance(t, dict)]
        best = (results.get("best") or {}).get("trial") if isinstance(results.get("best"), dict) else None
        keys = sorted({k for t in trials if isinstance(t.get("config"), dict) for k in t["config"]})
        rows = []
        for t in trials:
            history = [h for h in t.get("history") or [] if isinstance(h, dict)]
            values = [h[metric] for h in history if isinstance(h.get(metric), (int, float))]
            last = history[-1] if history else {}
            config = t.get("config") if isinstance(t.get("config"), dict) else {}
            rows.append([tag("b", f"{t.get('trial')} (best)") if t.get("trial") == best else t.get("trial"),
                         t.get("status"), *[config.get(k) for k in keys], last.get("kimg"), last.get(metric),
                         min(values) if values else None])
        out.append(tag("h3", f"Trials ({len(trials)}), by {metric} (lower is better)")
                   + table(["trial", "status", *keys, "kimg", metric, f"best {metric}"], rows))
        if isinstance(results.get("best"), dict):
            b = results["best"]
            out.append(note(f"promoted: trial {b.get('trial')} at kimg {fmt(b.get('kimg'))} with {metric} "
                            f"{fmt(b.get(metric))}, as this stage's network output"))
    plot_key = v.output("plot")
    plot = r.picture(plot_key) if v.settled else None
    if plot is not None:
        out.append(figure(plot, f"{results.get('metric') if results else 'metric'} against kimg, every trial",
                          v.href(plot_key)))
    return join(out)


def synthesize(v: StageView, r: Reader) -> Html:
    from cleftgan_hpc.synthesis.manifest import DatasetError, check_manifest

    prefix = v.cfg("prefix")
    manifest = r.json(v.output("manifest")) if v.settled else None
    if manifest is None and prefix and v.settled:
        manifest = r.json(join_key(prefix, "manifest.json"))
    if manifest is not None:
        try:
            manifest = check_manifest(manifest, "the manifest")
        except DatasetError as exc:
            r.note(v.output("manifest"), f"damaged: {exc}")
            manifest = None
    if manifest is None:
        if not prefix:
            return Html()
        shards = [i for i in r.list(prefix + "/shard-")]
        expected = math.ceil(v.cfg("image_count", 0) / max(v.cfg("shard_size", 1), 1))
        return note(f"{len(shards)} of {expected} shards in {r.store.uri(prefix)} so far "
                    f"({sum(i.size for i in shards) / 1e6:.1f} MB); the manifest is written last")
    prefix = str(manifest.get("prefix") or prefix)
    shards, opts, net = manifest["shards"], manifest["options"], manifest.get("network") or {}
    first = opts.get("first_seed")
    facts = [
        ("dataset", tag("a", r.store.uri(prefix), href=v.href(prefix + "/"))),
        ("images", f"{manifest.get('count'):,} {str(manifest.get('extension')).upper()}"),
        ("shards", f"{len(shards)} ({sum(s['bytes'] for s in shards) / 1e6:,.1f} MB)"),
        ("seeds", f"{first} to {first + manifest['count'] - 1}" if isinstance(first, int) else "-"),
        ("truncation psi", opts.get("truncation_psi")),
        ("network", tag("code", f"{net.get('source')} (sha256 {str(net.get('sha256'))[:16]}...)")),
        ("created", manifest.get("created")),
        ("card, manifest", join([tag("a", "README.md", href=v.href(join_key(prefix, "README.md"))), " ",
                                 tag("a", "manifest.json", href=v.href(join_key(prefix, "manifest.json")))])),
    ]
    out = [pairs(facts)]
    grid = _sample_grid(r, join_key(prefix, shards[0]["name"])) if shards else None
    if grid is not None:
        out.append(figure(grid, f"the first {GRID_SAMPLES} images of {shards[0]['name']}"))
    return join(out)


def _sample_grid(r: Reader, key: str) -> Any:
    """A grid of the first images of a shard, read from the start of the stream (a shard of
    thousands of images is not downloaded for it)."""
    from PIL import Image

    from cleftgan_hpc.errors import CleftGanError
    from cleftgan_hpc.synthesis.shards import iter_samples

    tiles = []
    try:
        with r.store.open_read(key) as stream:
            for sample in iter_samples(stream):
                data = next((sample[e] for e in ("png", "jpg", "webp") if e in sample), None)
                if data is not None:
                    with Image.open(io.BytesIO(data)) as im:
                        tiles.append(im.convert("RGB").resize((TILE, TILE), Image.Resampling.LANCZOS))
                if len(tiles) == GRID_SAMPLES:
                    break
    except (CleftGanError, OSError, ValueError) as exc:  # a damaged shard, a decoder error, a lost connection
        r.note(key, f"damaged or unreadable: {exc}")
    if not tiles:
        return None
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * (TILE + 2) + 2, rows * (TILE + 2) + 2), (40, 40, 40))
    for i, t in enumerate(tiles):
        sheet.paste(t, (2 + (i % cols) * (TILE + 2), 2 + (i // cols) * (TILE + 2)))
    return encode(sheet, key, photo=True)


def evaluate(v: StageView, r: Reader) -> Html:
    out = []
    record = r.json(v.output("metrics")) if v.settled else None
    if record is not None:
        values = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
        out.append(table(["metric", "value"], [(k.upper(), val) for k, val in values.items()]))
        out.append(tag("h3", "Provenance") + pairs(_provenance(record)))
    pic_key = v.output("report")
    pic = r.picture(pic_key) if v.settled else None
    if pic is not None:
        out.append(tag("h3", "Samples, severity histograms (DISH) and path lengths (PPL)")
                   + figure(pic, "click for full size", v.href(pic_key)))
    return join(out)


def _provenance(m: dict[str, Any]) -> list[tuple[str, Any]]:
    def d(name: str) -> dict[str, Any]:
        return m[name] if isinstance(m.get(name), dict) else {}

    net, data, gen = d("network"), d("dataset"), d("generated")
    rows: list[tuple[str, Any]] = [
        ("network", tag("code", f"{net.get('source')} (sha256 {str(net.get('sha256'))[:16]}...)")),
        ("real images", tag("code", f"{data.get('source')}: {data.get('images')} images "
                                    f"(sha256 {str(data.get('sha256'))[:16]}...)")),
        ("generated", f"{gen.get('images')} images from seed {gen.get('first_seed')}, "
                      f"psi {gen.get('truncation_psi')}"),
    ]
    rows += [(f"model: {k}", tag("code", str(v)[:16] + "...")) for k, v in d("models").items()]
    if d("kid"):
        rows.append(("KID", f"{d('kid').get('subsets')} subsets of {d('kid').get('subset_size')}"))
    if d("ppl"):
        rows.append(("PPL", ", ".join(f"{k} {fmt(v)}" for k, v in d("ppl").items())))
    if d("dish"):
        dish = d("dish")
        rows.append(("DISH", f"{dish.get('divergence')} over {len(dish.get('edges') or []) - 1} bins; mean severity "
                             f"real {fmt(dish.get('real_mean'))}, generated {fmt(dish.get('fake_mean'))}"))
    rows.append(("took", f"{fmt(m.get('seconds'))} s" + (" (resumed)" if m.get("resumed") else "")))
    return rows


def severity(v: StageView, r: Reader) -> Html:
    out = []
    record = r.json(v.output("record")) if v.settled else None
    if record is not None:
        stats = record.get("statistics") if isinstance(record.get("statistics"), dict) else {}
        images = record.get("images") if isinstance(record.get("images"), dict) else {}
        index = record.get("index") if isinstance(record.get("index"), dict) else {}
        facts = [("images", images.get("count")), *[(k, fmt(stats.get(k))) for k in ("median", "mean", "min", "max")],
                 ("normal network", tag("code", f"sha256 {str(index.get('normal_network_sha256'))[:16]}...")),
                 ("real-set cache", record.get("cache") or "-"), ("took", f"{fmt(record.get('seconds'))} s")]
        agreement = record.get("agreement") if isinstance(record.get("agreement"), dict) else None
        if agreement is not None:
            facts.append((f"agreement with {agreement.get('rating_column')}",
                          f"Spearman {fmt(agreement.get('spearman'))}, Pearson {fmt(agreement.get('pearson'))} "
                          f"over {agreement.get('pairs')} images"))
        out.append(pairs(facts))
    plots = [("summary", "scores, score against reconstruction, the extremes' heat maps")]
    if record is not None and record.get("agreement"):  # only a stage given ratings draws it
        plots.append(("agreement_plot", "score against rating"))
    for name, caption in plots if v.settled else []:
        pic = r.picture(v.output(name))
        if pic is not None:
            out.append(figure(pic, caption, v.href(v.output(name))))
    if v.settled:
        overlays = sorted(i.key for i in r.list(v.output("heatmaps") + "/") if not i.key.rsplit("/", 1)[-1]
                          .startswith("sample"))
        pics = [(k, p) for k, p in ((k, r.picture(k, 420)) for k in overlays[:8]) if p is not None]
        if pics:
            out.append(tag("h3", "Highest and lowest scores: face | normalised | heat map | over the face")
                       + join(figure(p, k.rsplit("/", 1)[-1], v.href(k)) for k, p in pics))
    return join(out)


def compare(v: StageView, r: Reader) -> Html:
    out = []
    markdown = r.text(v.output("markdown")) if v.settled else None
    if markdown is not None:
        out.append(tag("pre", markdown))
    pic = r.picture(v.output("figure")) if v.settled else None
    if pic is not None:
        out.append(figure(pic, "every metric by setting (the paper's figures marked)", v.href(v.output("figure"))))
    return join(out)

"""HTML pieces of the report: escaping, tables, figures, an SVG line chart, and the page itself.

Plain HTML and CSS only: no script, no web font, no request beyond the page's own data: URIs
(and the links a reader follows), so the file opens anywhere, offline, from a pulled copy.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

from cleftgan_hpc.report.read import Picture


class Html(str):
    """Markup that is already safe; every other str is escaped where it is placed, also when it is
    added to Html (``Html + str`` and ``str + Html`` escape the str)."""

    __slots__ = ()

    def __add__(self, other: object) -> Html:
        return Html(str.__add__(self, esc(other)))

    def __radd__(self, other: object) -> Html:
        return Html(str.__add__(esc(other), self))


def esc(value: Any) -> Html:
    return value if isinstance(value, Html) else Html(html.escape("" if value is None else str(value)))


def join(parts: Iterable[Any]) -> Html:
    return Html("".join(esc(p) for p in parts))


def tag(name: str, body: Any = "", **attrs: Any) -> Html:
    """<name attrs>body</name>; attribute names take '_' for '-' and a trailing '_' (class_)."""
    at = "".join(f' {k.rstrip("_").replace("_", "-")}="{html.escape(str(v), quote=True)}"'
                 for k, v in attrs.items() if v is not None)
    return Html(f"<{name}{at}>{esc(body)}</{name}>")


def fmt(value: Any) -> str:
    """A number or value as people read it in a table."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], class_: str | None = None) -> Html:
    head = tag("tr", join(tag("th", h) for h in headers))
    body = join(tag("tr", join(tag("td", c if isinstance(c, Html) else fmt(c)) for c in row)) for row in rows)
    return tag("table", tag("thead", head) + tag("tbody", body), class_=class_)


def pairs(items: Iterable[tuple[Any, Any]]) -> Html:
    """A two-column table of labels and values."""
    return table(["", ""], items, class_="pairs")


def figure(pic: Picture, caption: Any = None, href: str | None = None, width: int | None = None) -> Html:
    """An inline image (linked to its full-size original when ``href`` is given)."""
    width = width or max(pic.width, min(4 * pic.width, 360))  # a 32 px dataset's images are not shown at 32 px
    pixelated = ' class="pixelated"' if width >= 2 * pic.width else ""
    img = Html(f'<img src="{pic.uri}" width="{width}" height="{round(width * pic.height / max(pic.width, 1))}" '
               f'alt="{html.escape(pic.key, quote=True)}"{pixelated}>')
    if href:
        img = tag("a", img, href=href)
    return tag("figure", img + (tag("figcaption", caption) if caption is not None else ""))


def badge(state: str) -> Html:
    return tag("span", state, class_=f"state {state}")


def note(text: Any, class_: str = "note") -> Html:
    return tag("p", text, class_=class_)


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str,
               width: int = 560, height: int = 220) -> Html:
    """An inline SVG line chart of (x, y) series with labelled axis ends and a legend."""
    pts = [p for s in series.values() for p in s if all(math.isfinite(v) for v in p)]
    if not pts:
        return note(f"{title}: no data yet")
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + (abs(y0) or 1) * 0.1)
    left, right, top, bottom = 56, 12, 24, 34
    w, h = width - left - right, height - top - bottom

    def xy(p: tuple[float, float]) -> str:
        return f"{left + (p[0] - x0) / (x1 - x0) * w:.1f},{top + (1 - (p[1] - y0) / (y1 - y0)) * h:.1f}"

    parts = [
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="plot"/>',
        f'<text x="{left}" y="16" class="title">{esc(title)}</text>',
        f'<text x="{left}" y="{height - 6}" class="tick">{fmt(x0)}</text>',
        f'<text x="{left + w}" y="{height - 6}" class="tick end">{fmt(x1)}</text>',
        f'<text x="{left + w / 2}" y="{height - 6}" class="tick mid">{esc(xlabel)}</text>',
        f'<text x="{left - 4}" y="{top + 10}" class="tick end">{fmt(y1)}</text>',
        f'<text x="{left - 4}" y="{top + h}" class="tick end">{fmt(y0)}</text>',
    ]
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        good = [p for p in s if all(math.isfinite(v) for v in p)]
        if len(good) == 1:
            parts.append(f'<circle cx="{xy(good[0]).split(",")[0]}" cy="{xy(good[0]).split(",")[1]}" r="3" '
                         f'fill="{color}"/>')
        elif good:
            parts.append(f'<polyline points="{" ".join(xy(p) for p in good)}" stroke="{color}" class="line"/>')
        parts.append(f'<text x="{left + w - 4}" y="{top + 14 + 14 * i}" class="tick end" fill="{color}">'
                     f'{esc(name)}</text>')
    return Html(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
                f'aria-label="{html.escape(title, quote=True)}">{"".join(parts)}</svg>')


CSS = """
:root { --fg: #1d2125; --muted: #5f6b76; --line: #d8dee4; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 24px 32px 64px; max-width: 1240px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 36px 0 8px; padding-top: 12px;
     border-top: 2px solid var(--line); } h3 { font-size: 15px; margin: 20px 0 6px; }
.sub { color: var(--muted); margin: 0 0 16px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
table.pairs thead { display: none; } table.pairs td:first-child { color: var(--muted); white-space: nowrap; }
td code, p code { font-size: 12px; }
.state { display: inline-block; padding: 0 8px; border-radius: 10px; font-weight: 600; font-size: 12px;
         color: #fff; background: #8a949e; }
.state.done { background: #2da44e; } .state.running { background: #0969da; } .state.failed { background: #cf222e; }
.state.cancelled { background: #bc4c00; } .state.pending, .state.unknown { background: #8a949e; }
.note { color: var(--muted); } .problems { background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 12px; }
.problems li { margin: 2px 0; } .error { background: #ffebe9; border: 1px solid #cf222e; padding: 8px 12px;
         white-space: pre-wrap; font: 12px/1.4 ui-monospace, monospace; }
pre.log { background: var(--bg); border: 1px solid var(--line); padding: 8px 12px; max-height: 420px;
          overflow: auto; font: 12px/1.4 ui-monospace, monospace; white-space: pre-wrap; }
figure { display: inline-block; margin: 4px 12px 12px 0; vertical-align: top; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
img.pixelated { image-rendering: pixelated; }
figcaption { color: var(--muted); font-size: 12px; text-align: center; }
.strip { display: flex; gap: 8px; overflow-x: auto; padding-bottom: 4px; }
.strip figure { flex: 0 0 auto; margin: 0; }
svg { background: #fff; border: 1px solid var(--line); margin: 4px 12px 12px 0; }
svg .plot { fill: none; stroke: var(--line); } svg .line { fill: none; stroke-width: 1.8; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); } svg .title { font-weight: 600; fill: var(--fg); }
svg .end { text-anchor: end; } svg .mid { text-anchor: middle; }
details { margin: 6px 0 12px; } summary { cursor: pointer; color: #0969da; }
a { color: #0969da; text-decoration: none; } a:hover { text-decoration: underline; }
.links a { margin-right: 14px; }
"""


def page(title: str, body: Html) -> str:
    """The whole document. The empty data: icon keeps the browser from asking for /favicon.ico."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )

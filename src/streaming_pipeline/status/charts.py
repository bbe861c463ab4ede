"""The day report's charts as SVG drawn here, in Python: bars (grouped, stacked, horizontal),
lines on a time axis and a timeline of spans. The page needs no chart library (plotly.js inline
made a 12-member day's report 4.8 MB; these charts are a few kB each), draws with scripts off,
and every mark carries a `<title>`, which browsers show on hover and screen readers read.

Pure functions of numbers and names: each returns one `<figure>` with its `<svg>`. Every name
(archives and reasons come from archives and workers) is escaped here, the one place text
enters the markup.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 960
HEIGHT = 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 56
AXIS = "#555"  # 7.5:1 on white: axis lines and tick labels reach WCAG's 4.5:1 for text
GRID = "#e3e3e3"
MAX_LABELS = 40  # category labels drawn at most (every k-th beyond that; each bar keeps its title)


@dataclass(frozen=True)
class Series:
    """One named, coloured run of values (a bar series or a line)."""

    name: str
    colour: str
    values: Sequence[float]
    times: Sequence[dt.datetime] = ()  # a line's own times (else the chart's)


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top` (1, 2 or 5 times a power of ten apart)."""
    if not top > 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def number(value: float) -> str:
    """A tick's or a bar's value, short: 3 significant digits, thousands grouped."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _figure(label: str, body: str, height: int, legend: Sequence[Series] = ()) -> str:
    keys = "".join(
        f'<span class="key"><i style="background:{s.colour}"></i>{escape(s.name)}</span>' for s in legend
    )
    return (
        f'<figure class="chart"><svg viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}"'
        f' width="100%" preserveAspectRatio="xMinYMin meet"><title>{escape(label)}</title>{body}</svg>'
        + (f'<figcaption class="keys">{keys}</figcaption>' if keys else "")
        + "</figure>"
    )


def _value_axis(ticks: list[float], height: int, title: str) -> str:
    """Horizontal grid lines and labels for a value axis on the left (0 at the bottom)."""
    bottom = height - BOTTOM
    span = bottom - TOP
    top = ticks[-1] or 1.0
    out = []
    for t in ticks:
        y = bottom - span * t / top
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{AXIS}">{number(t)}</text>')
    out.append(
        f'<text transform="translate(14 {(TOP + bottom) / 2:.0f}) rotate(-90)" text-anchor="middle"'
        f' fill="{AXIS}">{escape(title)}</text>'
    )
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}" stroke="{AXIS}"/>')
    return "".join(out)


def _category_labels(
    categories: Sequence[str], x_of: Callable[[int], float], width: float, height: int
) -> str:
    every = max(1, math.ceil(len(categories) / MAX_LABELS))
    turn = len(categories) > 12
    out = []
    for i, name in enumerate(categories):
        if i % every:
            continue
        x = x_of(i) + width / 2
        y = height - BOTTOM + 14
        text = escape(name if len(name) <= 24 else name[:23] + "…")
        if turn:
            place = f'transform="translate({x:.1f} {y}) rotate(-35)" text-anchor="end"'
            out.append(f'<text {place} fill="{AXIS}">{text}</text>')
        else:
            out.append(f'<text x="{x:.1f}" y="{y}" text-anchor="middle" fill="{AXIS}">{text}</text>')
    return "".join(out)


def bar_chart(
    label: str,
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    y_title: str,
    stacked: bool = False,
    colours: Sequence[str] | None = None,
    height: int = HEIGHT,
) -> str:
    """Vertical bars, one group (or stack) per category; `colours` colours a single series' bars
    one by one (an archive's state)."""
    if not categories:
        return _empty(label)
    n = len(categories)
    if stacked:
        top = max((sum(s.values[i] for s in series) for i in range(n)), default=0.0)
    else:
        top = max((v for s in series for v in s.values), default=0.0)
    ticks = nice_ticks(top)
    scale = (height - BOTTOM - TOP) / (ticks[-1] or 1.0)
    slot = (WIDTH - LEFT - RIGHT) / n
    bar = slot * 0.8 / (1 if stacked else len(series))
    bottom = height - BOTTOM
    marks = []
    for i, category in enumerate(categories):
        base = 0.0
        for k, s in enumerate(series):
            value = float(s.values[i])
            x = LEFT + i * slot + slot * 0.1 + (0 if stacked else k * bar)
            y = bottom - (base + value) * scale
            colour = colours[i] if colours is not None else s.colour
            tip = f"{category}: {s.name} {number(value)}"
            marks.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar, 0.5):.1f}" height="{value * scale:.1f}"'
                f' fill="{colour}"><title>{escape(tip)}</title></rect>'
            )
            if stacked:
                base += value
    labels = _category_labels(categories, lambda i: LEFT + i * slot, slot, height)
    legend = series if len(series) > 1 else ()
    return _figure(label, _value_axis(ticks, height, y_title) + "".join(marks) + labels, height, legend)


def hbar_chart(label: str, names: Sequence[str], values: Sequence[float], colours: Sequence[str]) -> str:
    """Horizontal bars, one per name, largest first as given; the name left of its bar."""
    if not names:
        return _empty(label)
    row = 24
    left = 380
    height = TOP + row * len(names) + 30
    top = max(values, default=0.0)
    ticks = nice_ticks(top)
    scale = (WIDTH - left - RIGHT) / (ticks[-1] or 1.0)
    out = []
    for t in ticks:
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{height - 30}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{x:.1f}" y="{height - 12}" text-anchor="middle" fill="{AXIS}">{number(t)}</text>'
        )
    for i, (name, value, colour) in enumerate(zip(names, values, colours, strict=True)):
        y = TOP + i * row
        short = name if len(name) <= 56 else name[:55] + "…"
        out.append(
            f'<text x="{left - 8}" y="{y + 16}" text-anchor="end" fill="{AXIS}">{escape(short)}</text>'
            f'<rect x="{left}" y="{y + 4}" width="{max(value * scale, 0.5):.1f}" height="{row - 8}"'
            f' fill="{colour}"><title>{escape(name)}: {number(value)}</title></rect>'
        )
    return _figure(label, "".join(out), height)


def _time_axis(
    start: dt.datetime, end: dt.datetime, x_of: Callable[[dt.datetime], float], height: int, left: float
) -> str:
    span = max((end - start).total_seconds(), 1.0)
    steps = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
    step = next((s for s in steps if span / s <= 8), steps[-1])
    first = math.ceil(start.timestamp() / step) * step
    fmt = "%H:%M:%S" if step < 60 else "%m-%d %H:%M" if span > 86400 else "%H:%M"
    out = []
    t = first
    while t <= end.timestamp():
        at = dt.datetime.fromtimestamp(t, tz=start.tzinfo or dt.UTC)
        x = x_of(at)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{height - BOTTOM}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{x:.1f}" y="{height - BOTTOM + 16}" text-anchor="middle" fill="{AXIS}">'
            f"{at.strftime(fmt)}</text>"
        )
        t += step
    y = height - BOTTOM
    out.append(f'<line x1="{left}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}" stroke="{AXIS}"/>')
    zone = escape(start.strftime("%Z") or "UTC")
    out.append(
        f'<text x="{WIDTH - RIGHT}" y="{height - 8}" text-anchor="end" fill="{AXIS}">time ({zone})</text>'
    )
    return "".join(out)


def line_chart(
    label: str, times: Sequence[dt.datetime], series: Sequence[Series], *, y_title: str, height: int = HEIGHT
) -> str:
    """Lines over time, all on one value axis (draw a chart per unit: no second axes); each line
    over `times`, or over its own where it has them."""
    every = [t for s in series for t in (s.times or times)]
    if not every:
        return _empty(label)
    start, end = min(every), max(every)
    span = max((end - start).total_seconds(), 1.0)
    ticks = nice_ticks(max((v for s in series for v in s.values), default=0.0))
    scale = (height - BOTTOM - TOP) / (ticks[-1] or 1.0)

    def x_of(t: dt.datetime) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (t - start).total_seconds() / span

    marks = []
    for s in series:
        bottom = height - BOTTOM
        points = " ".join(
            f"{x_of(t):.1f},{bottom - float(v) * scale:.1f}"
            for t, v in zip(s.times or times, s.values, strict=True)
        )
        marks.append(
            f'<polyline points="{points}" fill="none" stroke="{s.colour}" stroke-width="2">'
            f"<title>{escape(s.name)}</title></polyline>"
        )
    axes = _value_axis(ticks, height, y_title) + _time_axis(start, end, x_of, height, LEFT)
    return _figure(label, axes + "".join(marks), height, series)


@dataclass(frozen=True)
class Span:
    """A bar on the timeline: a row (a worker run), where it starts and how long it lasts."""

    row: str
    start: dt.datetime
    seconds: float
    kind: str  # its colour's key (a stage)


def timeline(label: str, rows: Sequence[str], spans: Sequence[Span], colours: dict[str, str]) -> str:
    """One lane per row, a bar per span coloured by its kind, on a time axis; a row's kinds side
    by side within its lane (so overlapping stages all show)."""
    if not spans:
        return _empty(label)
    lane = 26
    left = 300
    height = TOP + lane * len(rows) + BOTTOM
    start = min(s.start for s in spans)
    end = max(s.start + dt.timedelta(seconds=s.seconds) for s in spans)
    total = max((end - start).total_seconds(), 1.0)
    kinds = [k for k in colours if any(s.kind == k for s in spans)]
    index = {r: i for i, r in enumerate(rows)}

    def x_of(t: dt.datetime) -> float:
        return left + (WIDTH - left - RIGHT) * (t - start).total_seconds() / total

    out = []
    for r, i in index.items():
        short = r if len(r) <= 44 else r[:43] + "…"
        y = TOP + i * lane + 17
        out.append(f'<text x="{left - 8}" y="{y}" text-anchor="end" fill="{AXIS}">{escape(short)}</text>')
    out.append(_time_axis(start, end, x_of, height, left))
    band = (lane - 6) / max(len(kinds), 1)
    for s in spans:
        if s.row not in index:
            continue
        x = x_of(s.start)
        w = max((WIDTH - left - RIGHT) * s.seconds / total, 0.5)
        top = TOP + index[s.row] * lane + 3 + kinds.index(s.kind) * band
        tip = f"{s.row}: {s.kind} {s.start.strftime('%H:%M:%S')} +{s.seconds:.1f} s"
        out.append(
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{w:.1f}" height="{band:.1f}" fill="{colours[s.kind]}">'
            f"<title>{escape(tip)}</title></rect>"
        )
    legend = [Series(k, colours[k], ()) for k in kinds]
    return _figure(label, "".join(out), height, legend)


def _empty(label: str) -> str:
    return f'<figure class="chart empty"><p class="note">{escape(label)}: nothing to draw.</p></figure>'


__all__ = ["Series", "Span", "bar_chart", "hbar_chart", "line_chart", "nice_ticks", "number", "timeline"]

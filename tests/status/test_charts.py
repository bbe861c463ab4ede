"""The report's SVG charts: their scales, their marks, and names that stay text."""

from __future__ import annotations

import datetime as dt
import re

from streaming_pipeline.status.charts import (
    Series,
    Span,
    bar_chart,
    hbar_chart,
    line_chart,
    nice_ticks,
    timeline,
)

EVIL = '<img src=x onerror="alert(1)">&'


def test_ticks_are_round_and_reach_the_top() -> None:
    assert nice_ticks(7.3) == [0, 2, 4, 6, 8]
    assert nice_ticks(100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0.03)[-1] >= 0.03 and nice_ticks(0) == [0.0, 1.0]


def test_a_bar_per_value_and_a_stack_per_category() -> None:
    two = [Series("x", "#111", [1, 2, 3]), Series("y", "#222", [3, 2, 1])]
    grouped = bar_chart("g", ["a", "b", "c"], two, y_title="n")
    assert grouped.count("<rect") == 6 and "<title>c: y 1</title>" in grouped
    stacked = bar_chart("s", ["a", "b"], [Series("x", "#111", [1, 2]), Series("y", "#222", [3, 4])],
                        y_title="n", stacked=True)  # fmt: skip
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', stacked)]
    # The taller stack (2 + 4 = 6) reaches the axis' top tick (6), the whole plot's height.
    assert abs(heights[2] + heights[3] - 216) < 0.5, heights
    assert "nothing to draw" in bar_chart("empty", [], [], y_title="n")


def test_names_from_archives_are_text_in_every_chart() -> None:
    t0 = dt.datetime(2025, 1, 25, 6, tzinfo=dt.UTC)
    drawn = [
        bar_chart(EVIL, [EVIL], [Series(EVIL, "#111", [1])], y_title=EVIL),
        hbar_chart(EVIL, [EVIL], [2], ["#111"]),
        line_chart(EVIL, [t0, t0 + dt.timedelta(minutes=5)], [Series(EVIL, "#111", [1, 2])], y_title=EVIL),
        timeline(EVIL, [EVIL], [Span(EVIL, t0, 30.0, "convert")], {"convert": "#111"}),
    ]
    for svg in drawn:
        assert "<img" not in svg and 'onerror="' not in svg and "&lt;img" in svg


def test_a_timeline_places_each_span_in_its_row_and_time() -> None:
    t0 = dt.datetime(2025, 1, 25, 6, tzinfo=dt.UTC)
    spans = [Span("r1", t0, 60.0, "a"), Span("r2", t0 + dt.timedelta(seconds=60), 60.0, "a")]
    svg = timeline("t", ["r1", "r2"], spans, {"a": "#111"})
    (first, second) = [
        tuple(float(v) for v in m) for m in re.findall(r'<rect x="([\d.]+)" y="([\d.]+)"', svg)
    ]
    assert second[0] > first[0] and second[1] > first[1], "later, and in the next row"
    assert "06:00" in svg and "06:01" in svg

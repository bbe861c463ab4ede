"""The web view's pure rules, without a server or a database."""

from __future__ import annotations

import datetime as dt

from streaming_pipeline.web.views import (
    MAX_PAGE,
    MAX_QUERY,
    SearchForm,
    capped_range,
    clock,
    marked,
    play_from,
)


def test_a_highlight_is_cut_into_text_and_marks() -> None:
    assert marked("ask «not» what «your» country") == [
        ("ask ", False), ("not", True), (" what ", False), ("your", True), (" country", False),
    ]  # fmt: skip
    assert marked("«<b>»") == [("<b>", True)]  # markup is a part's text: the template escapes it
    assert marked("no match") == [("no match", False)]
    assert marked("open «end") == [("open ", False), ("end", True)]


def test_the_search_form_is_bounded_and_checked() -> None:
    form = SearchForm.of(
        {"q": "  x" * 300, "days": "2025-01-01..2025-01-31", "language": "EN", "page": "9999"}
    )
    assert len(form.text) == MAX_QUERY and form.page == MAX_PAGE and form.language == "en"
    query = form.query()
    assert (query.first_day, query.last_day) == (dt.date(2025, 1, 1), dt.date(2025, 1, 31))
    assert query.offset == (MAX_PAGE - 1) * 20 and query.limit == 21  # one more: is there a next page?
    assert SearchForm.of({"q": "x", "days": "2025-02-30"}).problem is not None
    assert SearchForm.of({"q": "x", "page": "two"}).page == 1
    assert SearchForm.of({"q": "x", "slot": "09_00", "page": "2"}).link(3) == {
        "q": "x",
        "slot": "09_00",
        "page": "3",
    }
    assert SearchForm.of({"q": "x", "page": "2"}).link(1) == {"q": "x"}


def test_times() -> None:
    assert clock(3723.9) == "1:02:03" and clock(63) == "1:03" and clock(None) == "-"
    assert play_from(0.4) == 0.0 and play_from(12.5) == 11.5


def test_an_open_ended_range_is_answered_with_a_chunk() -> None:
    assert capped_range("bytes=1000-", 500) == "bytes=1000-1499"
    assert capped_range("bytes=0-99", 500) == "bytes=0-99"
    assert capped_range("bytes=-500", 500) == "bytes=-500"  # the last 500 bytes, as asked
    assert capped_range("bytes=0-1,5-", 500) == "bytes=0-1,5-"

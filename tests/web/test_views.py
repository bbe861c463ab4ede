"""The web view's pure rules, without a server or a database."""

from __future__ import annotations

import datetime as dt

import pytest

from streaming_pipeline.web.views import (
    MAX_PAGE,
    MAX_QUERY,
    MAX_VALUE,
    PAGE,
    BadInput,
    SearchForm,
    SlotListing,
    capped_range,
    clock,
    download_name,
    marked,
    parse_moment,
    play_from,
    read_params,
    start_moment,
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
    assert query.offset == (MAX_PAGE - 1) * PAGE and query.limit == PAGE  # members a page
    assert SearchForm.of({"q": "x", "days": "2025-02-30"}).problem is not None
    assert SearchForm.of({"q": "x", "page": "two"}).problem == "page=two is not a page number"
    assert "stop at page" in (SearchForm.of({"q": "x", "page": "9999"}).problem or "")
    assert "at most 16" in (SearchForm.of({"q": "x", "language": "e" * 17}).problem or "")
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


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90.5", 90.5), ("1:30", 90), ("01:02:03", 3723), ("1m30s", 90), ("1h2m3s", 3723),
     ("45s", 45), ("2m", 120), ("1h", 3600), (" 1:30 ", 90), ("1M30S", 90)],
)  # fmt: skip
def test_a_moment_is_read_as_people_write_it(text: str, seconds: float) -> None:
    assert parse_moment(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "abc", "-5", "1:75", "1:60:00", "m", "s", "1x", "1:2:3:4", "nan", "inf"]
)
def test_what_is_not_a_moment_is_none(text: str) -> None:
    assert parse_moment(text) is None


def test_a_moment_that_cannot_be_followed_is_said_and_starts_at_zero() -> None:
    assert start_moment(None, 100.0).note is None and start_moment("1:30", 100.0).seconds == 90
    assert start_moment("abc", 100.0).note == (
        "t=abc is not a time (write 90, 1:30, 1m30s or 1:02:03); started at 0:00"
    )
    assert start_moment("-5", 100.0).note == "t=-5 is before the start; started at 0:00"
    past = start_moment("200", 100.0)
    assert past.seconds == 0 and past.note == "t=200 is past the end (1:40); started at 0:00"
    assert start_moment("<b>", 10.0).note is not None  # shown escaped by the template, as text


def test_query_strings_are_checked_before_anything_reads_them() -> None:
    assert read_params(b"q=caf%C3%A9&page=2&token=t", {"q", "page"}) == {
        "q": "café",
        "page": "2",
        "token": "t",
    }
    assert read_params(b"q=a+b", {"q"}) == {"q": "a b"}
    cases = {
        b"q=%00": "q holds a control character (U+0000); it takes text",
        b"q=%ED%A0%80": "the address holds bytes that are not UTF-8 text",
        b"x=1": "this page takes no parameter 'x' (it takes: q)",
        b"q=a&q=b": "q is given twice",
        b"q=" + b"a" * (MAX_VALUE + 1): f"q is {MAX_VALUE + 1} characters long; it takes at most {MAX_VALUE}",
        b"%00=1": "this page takes no parameter '\\x00' (it takes: q)",
    }
    for raw, message in cases.items():
        with pytest.raises(BadInput) as caught:
            read_params(raw, {"q"})
        assert str(caught.value) == message


def test_downloads_are_named_after_the_whole_path() -> None:
    day = dt.date(2025, 1, 25)
    assert (
        download_name(day, "06_00", "field/clip_00000.wav", ".flac")
        == "2025-01-25_06_00_field_clip_00000.flac"
    )
    hostile = download_name(day, "06_00", 'studio/"><script>.wav', ".json")
    assert hostile == "2025-01-25_06_00_studio_script.json" and "/" not in hostile and '"' not in hostile


def test_a_slot_listing_takes_known_orders_and_page_numbers() -> None:
    assert SlotListing.of({}) == SlotListing("name", 1)
    assert SlotListing.of({"sort": "-duration", "page": "3"}).link(page=4) == {
        "sort": "-duration",
        "page": "4",
    }
    assert "not an order" in (SlotListing.of({"sort": "size"}).problem or "")
    assert SlotListing.of({"page": "0"}).problem == "page=0 is not a page number"


def test_the_date_pickers_make_a_day_or_a_range_and_unknown_choices_are_said() -> None:
    from streaming_pipeline.state.browse import Choices

    assert (
        SearchForm.of({"q": "x", "from": "2025-01-01", "to": "2025-01-31"}).days == "2025-01-01..2025-01-31"
    )
    assert SearchForm.of({"q": "x", "from": "2025-01-05"}).days == "2025-01-05"
    assert SearchForm.of({"q": "x", "to": "2025-01-05", "days": "2025-02-01"}).days == "2025-02-01"
    assert SearchForm.of({"q": "x", "from": "2025-01-31", "to": "2025-01-01"}).query().first_day == dt.date(
        2025, 1, 1
    )
    have = Choices(("06_00", "09_00"), ("de", "en"), ("whisper-base",))
    assert SearchForm.of({"q": "x", "slot": "06_00", "language": "en"}).unknown_choice(have) is None
    said = SearchForm.of({"q": "x", "slot": "06:00"}).unknown_choice(have)
    assert said == "no slot '06:00' on any day; the done members there have: 06_00, 09_00"
    said = SearchForm.of({"q": "x", "language": "english", "days": "2025-01-25"}).unknown_choice(have)
    assert said == "no language 'english' on 2025-01-25; the done members there have: de, en"


def test_a_hit_marks_its_segment_whatever_its_start_s_last_digits() -> None:
    """A hit's start is kept to 10 ms (SearchHit), a segment's as PostgreSQL's real gives it."""
    from streaming_pipeline.state.segments import SearchHit
    from streaming_pipeline.web.views import hit_marks

    hit = SearchHit(dt.date(2025, 1, 25), "06_00", "a", "m.wav", "en", round(1.2350000143, 2), 3.0, 1.3,
                    "the printed bible", "the «printed» bible", "/r/m.flac", 0.1)  # fmt: skip
    marks = hit_marks([hit])
    assert marks.at(1.2350000143) == [("the ", False), ("printed", True), (" bible", False)]
    assert marks.at(2.0) is None and marks.word(" Printed,") and not marks.word("bible")

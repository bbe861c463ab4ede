"""`search-scale --http` on a small month: every query kind ran, in the database and through
`serve`, the member pages answered, and headless Chromium played the hour-long member from its
middle. Structure only: the figures are the command's to report, not a test's to time."""

from __future__ import annotations

import pytest

from streaming_pipeline.tools.search_scale import run_search_scale


@pytest.mark.slow
def test_search_scale_measures_the_database_and_the_web_view(pg_dsn: str) -> None:
    result = run_search_scale(segments=2000, days=2, queries=3, dsn=pg_dsn, http=True)
    assert result.segments == 2000  # counted before the web view's hour-long member was added
    assert set(result.latencies_ms) == set(result.kinds) and all(
        len(t) == 3 for t in result.latencies_ms.values()
    )
    assert min(result.hits["word, ranks 1-10"]) == 20  # the commonest words fill a page
    web = result.web
    assert web is not None and set(web.search_ms) == set(result.kinds)
    assert len(web.first_byte_ms) == 3 * 40 and len(web.hour_page_first_byte_ms) == 3
    pages = {"days (/)", "a day", "a slot", "a day's report", "grouped search"}
    assert set(web.page_first_byte_ms) == pages and all(len(t) == 30 for t in web.page_first_byte_ms.values())
    assert web.seek_bytes is not None, web.seek_note
    # It played from 30:00 of a file of tens of MB, asking for parts of it, never the whole.
    assert 0 < web.seek_bytes < web.hour_flac_bytes / 10 and web.seek_requests >= 1
    lines = "\n".join(result.lines())
    assert "over HTTP (serve)" in lines and "seek to 30:00" in lines and "a slot, 1st byte" in lines

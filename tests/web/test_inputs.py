"""Every wrong input told: a table of hostile and mistaken query strings over every route of a
served day (a real `serve`, real PostgreSQL): each is answered 4xx with a message, never a 5xx or
a traceback, and the log holds nothing above WARNING. Then what a user types that is right but
unusual: the times `?t=` takes, the slot pages, and download names."""

from __future__ import annotations

import html
import re
import urllib.parse
from pathlib import Path

import psycopg
import pytest

from ..conftest import DAY, query
from .conftest import Served, member_id, serve
from .test_server import process_day

# Values that must never reach the database as they are, or must be told.
BAD_VALUES = {
    "NUL": "%00",
    "a control character": "a%01b",
    "a lone surrogate": "%ED%A0%80",
    "bytes that are not UTF-8": "%FF%FE",
    "100 kB": "x" * 100_000,
}
# Values that are text and must simply work (or be told), never break a page.
ODD_VALUES = {
    "percent": "%25",
    "a lone percent": "%",
    "backslash": "%5C",
    "SQL": "'%3B%20DROP%20TABLE%20segments%3B--",
    "tsquery syntax": "a%20%26%20!b%20|%20(c%20<->%20d):*",
    "quotes": '""',
    "HTML": "<script>alert(1)</script>",
    "an accent": "se%C3%B1or",
}


def _routes(mid: int) -> dict[str, list[str]]:
    """Each route with the parameters it takes."""
    return {
        "/": [],
        "/search": ["q", "days", "slot", "language", "model", "page"],
        f"/member/{mid}": ["t", "play", "speaker", "q"],
        f"/member/{mid}/flac": ["download"],
        f"/member/{mid}/json": ["download"],
        f"/days/{DAY}": [],
        f"/days/{DAY}/slots/09_00": ["sort", "page"],
        f"/days/{DAY}/report": [],
        f"/api/days/{DAY}": [],
    }


def _readable(body: bytes) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", body.decode("utf-8", "replace")))


@pytest.fixture
def served(tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, server_stops) -> Served:
    """test_server's day (hostile names, a rejected member) processed and served."""
    remote = process_day(tmp_path, pg_dsn, tiny_model, clips)
    server = serve(tmp_path, pg_dsn, str(remote))
    server_stops.append(server)
    return server


@pytest.mark.slow
def test_no_input_over_any_route_is_a_server_error(served: Served, pg_dsn: str, clips) -> None:
    server = served
    mid = member_id(pg_dsn, clips[2][0])
    wrong: list[str] = []
    cases = 0
    for route, params in _routes(mid).items():
        for name in [*params, "unknown"]:
            table = {**BAD_VALUES, **ODD_VALUES} if name != "unknown" else {"text": "x"}
            for what, value in table.items():
                cases += 1
                status, _, body = server.get(f"{route}?{name}={value}")
                said = _readable(body)
                if status >= 500 or "Traceback" in said:
                    wrong.append(f"{route}?{name}= {what}: {status} {said[:200]!r}")
                elif what in BAD_VALUES or name == "unknown":
                    if status != 400 and not (what == "100 kB" and status == 414):
                        wrong.append(f"{route}?{name}= {what}: {status}, not told as a 400")
                    elif status == 400 and not re.search(rf"\b{name}\b|UTF-8", said):
                        wrong.append(
                            f"{route}?{name}= {what}: the 400 does not name what was wrong: {said[:200]!r}"
                        )
    # Path parameters: a day that is not one, a member that does not exist, a NUL in the slot.
    for path in ["/days/2025-13-45", "/days/%00", "/api/days/%00", f"/days/{DAY}/slots/%00",
                 "/member/999999", "/member/999999/flac", f"/member/{mid}/exe", "/member/%00"]:  # fmt: skip
        cases += 1
        status, _, body = server.get(path)
        if not 400 <= status < 500 or "Traceback" in _readable(body):
            wrong.append(f"{path}: {status}")
    assert not wrong, f"{len(wrong)} of {cases} cases:\n" + "\n".join(wrong)
    assert cases > 150
    log = server.log.read_text()
    loud = [line for line in log.splitlines() if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line)]
    assert not loud, loud[:5]


@pytest.mark.slow
def test_times_slots_and_downloads_as_users_write_them(served: Served, pg_dsn: str, clips) -> None:
    server = served
    plain = clips[2][0]
    mid = member_id(pg_dsn, plain)
    (row,) = query(pg_dsn, "SELECT duration_s FROM audio_files WHERE id = %s", mid)
    length = float(row["duration_s"])

    def start_of(t: str) -> tuple[str, str]:
        status, _, body = server.get(f"/member/{mid}?t={t}")
        page = body.decode()
        assert status == 200, page[-500:]
        at = re.search(r'data-start-at="([^"]+)"', page)
        note = re.search(r'<p class="error" id="t-note"[^>]*>(.*?)</p>', page, re.S)
        return (at[1] if at else "?"), (note[1].strip() if note else "")

    inside = f"{length / 2:.1f}"
    assert start_of(inside) == (inside, "")
    assert start_of("0:01") == ("1.0", "") and start_of("1s") == ("1.0", "")
    assert start_of("abc") == (
        "0.0",
        "t=abc is not a time (write 90, 1:30, 1m30s or 1:02:03); started at 0:00",
    )
    assert start_of("-5")[1] == "t=-5 is before the start; started at 0:00"
    at, note = start_of("1h2m3s")
    assert at == "0.0" and note.startswith("t=1h2m3s is past the end (")

    # A slot's page: its members, by name and by duration, a page past the last told.
    status, _, body = server.get(f"/days/{DAY}/slots/09_00")
    page = body.decode()
    names = re.findall(r'<td class="name"><a href="/member/\d+">(.*?)</a>', page)
    assert status == 200 and len(names) == 5, page[-2000:]  # 4 done, one rejected
    assert "5 members" in page
    status, _, body = server.get(f"/days/{DAY}/slots/09_00?sort=-duration")
    assert status == 200
    status, _, body = server.get(f"/days/{DAY}/slots/09_00?page=9")
    assert status == 404 and "past the last" in body.decode()
    status, _, body = server.get(f"/days/{DAY}/slots/09_00?sort=size")
    assert status == 400 and "name, -name, duration, -duration" in body.decode()
    status, _, body = server.get(f"/days/{DAY}/slots/23_00")
    assert status == 404

    # Downloads are named after the member's whole path, with its day and slot.
    status, headers, _ = server.get(f"/member/{mid}/flac?download=1")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(plain).with_suffix("").as_posix())
    assert status == 200 and f'filename="{DAY}_09_00_{stem}.flac"' in headers["content-disposition"], headers


@pytest.mark.slow
def test_a_search_that_finds_nothing_says_why(served: Served, pg_dsn: str) -> None:
    # Empty quotes read as nothing in every language; English stop words as nothing in English.
    status, _, body = served.get("/search?q=%22%22")
    assert status == 200 and "Nothing to look for" in body.decode()
    for q in ("the", "the+and+of"):
        status, _, body = served.get(f"/search?q={q}")
        said = " ".join(_readable(body).split())
        assert status == 200 and "No segment matches" in said, said[:900]
        assert re.search(
            r"In [a-z, ]*\benglish\b[a-z, ]* every word of it is too common to be indexed", said
        ), said
    status, _, body = served.get("/search?q=zzzqqqxxyy")
    assert status == 200 and "No segment matches" in body.decode()
    # A word the day's transcripts hold, and a page past the last of its results.
    # The random model's text is no words: one segment is given some (its index follows the text).
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        first = "(SELECT min(member) FROM segments)"
        conn.execute(f"UPDATE segments SET text = 'the printed bible' WHERE seq = 0 AND member = {first}")
    word = "bible"
    status, _, body = served.get(f"/search?q={urllib.parse.quote(word)}")
    page = _readable(body)
    assert status == 200 and re.search(r"\d+ segments? in \d+ members?, page 1 of 1", page), page[:800]
    status, _, body = served.get(f"/search?q={urllib.parse.quote(word)}&page=5")
    assert status == 200 and "Page 5 is past the last: this search has 1 page" in _readable(body)

    # Filters are choices of what the days hold; a value they do not hold is said, not searched.
    status, _, body = served.get(f"/search?q={word}&slot=06:00")
    said = " ".join(_readable(body).split())
    assert status == 400 and "no slot '06:00' on any day; the done members there have: 09_00" in said, said[
        :600
    ]
    status, _, body = served.get(f"/search?q={word}&language=english")
    assert status == 400 and "no language 'english'" in _readable(body)
    page = body.decode()
    assert '<option value="09_00">09_00</option>' in page  # the slot select lists the day's slot


@pytest.mark.slow
def test_static_files_are_kept_by_their_hash_and_the_flac_is_revalidated(
    served: Served, pg_dsn: str, clips
) -> None:
    status, _, body = served.get("/")
    links = re.findall(r'(?:href|src)="(/static/[a-z]+\.(?:css|js|svg)\?v=[0-9a-f]{12})"', body.decode())
    assert status == 200 and len(links) == 2, links  # the stylesheet and the icon on every page
    status, headers, _ = served.get(links[0])
    assert status == 200 and headers["cache-control"] == "public, max-age=31536000, immutable"
    status, headers, _ = served.get(links[0].split("?")[0] + "?v=000000000000")  # an old link
    assert status == 200 and headers["cache-control"] == "no-cache"
    mid = member_id(pg_dsn, clips[2][0])
    status, headers, whole = served.get(f"/member/{mid}/flac")
    assert status == 200 and headers["etag"] and headers["last-modified"], headers
    assert headers["cache-control"] == "no-store"  # see MediaResponse: Chromium would read ahead
    etag = headers["etag"]
    status, headers, body = served.get(f"/member/{mid}/flac", {"If-None-Match": etag})
    assert status == 304 and body == b"" and headers["etag"] == etag
    status, _, body = served.get(f"/member/{mid}/flac", {"If-None-Match": etag, "Range": "bytes=10-19"})
    assert status == 304  # the copy held is current: no bytes, whatever the range
    status, headers, body = served.get(
        f"/member/{mid}/flac", {"If-None-Match": '"other"', "Range": "bytes=10-19"}
    )
    assert status == 206 and body == whole[10:20] and headers["etag"] == etag

"""The web view's pure rules: reading a search form, cutting a highlight into marked parts,
clock times, the pages of results. No database, no server: unit tests call them directly."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..day_specs import parse_days
from ..errors import ConfigError
from ..state.search_text import CLOSE, OPEN
from ..state.segments import SearchQuery
from ..status.day import DayReport
from ..status.text import STATUS_COLUMNS, format_day_line, status_cells

if TYPE_CHECKING:
    from ..state.records import ArchiveStatus

PAGE = 20  # hits a page
MAX_QUERY = 200  # characters of a query
MAX_PAGE = 50  # pages: past it, narrow the query (ranking reads every candidate anyway)
LEAD_S = 1.0  # a hit plays from this long before it
# The most bytes an open-ended Range of a FLAC is answered with (web/app.py's MediaResponse).
# Chromium seeks in a FLAC without a seek table by bisection, a Range request a step: seeking to
# 30:00 of an hour-long one (search-scale --http) fetched 3.6 MiB before it played with 256 KiB
# chunks, 990 KiB with 64 KiB, ~650 KiB in 13 requests with 32 KiB, 500 KiB in 19 with 16 KiB.
MEDIA_CHUNK = 32 * 1024


@dataclass(frozen=True)
class SearchForm:
    """A search as the form sent it, with what was wrong with it."""

    text: str = ""
    days: str = ""  # a day or a range (2025-01-01..2025-01-31)
    slot: str = ""
    language: str = ""
    model: str = ""
    page: int = 1
    problem: str | None = None

    @classmethod
    def of(cls, params: Mapping[str, str]) -> SearchForm:
        def field(name: str, limit: int = 64) -> str:
            return params.get(name, "").strip()[:limit]

        try:
            page = max(1, min(MAX_PAGE, int(params.get("page", "1") or 1)))
        except ValueError:
            page = 1
        form = cls(field("q", MAX_QUERY), field("days", 32), field("slot"), field("language", 8).lower(),
                   field("model", 200), page)  # fmt: skip
        try:
            form.query()
        except ConfigError as exc:
            return cls(form.text, form.days, form.slot, form.language, form.model, page, problem=str(exc))
        return form

    def query(self) -> SearchQuery:
        first = last = None
        if self.days:
            days = parse_days([self.days])
            first, last = min(days), max(days)
        return SearchQuery(
            self.text, first_day=first, last_day=last, language=self.language or None,
            slot=self.slot or None, model=self.model or None, limit=PAGE + 1, offset=(self.page - 1) * PAGE,
        )  # fmt: skip

    def link(self, page: int) -> dict[str, str]:
        """The query string of another page of the same search."""
        values = {"q": self.text, "days": self.days, "slot": self.slot, "language": self.language,
                  "model": self.model, "page": str(page)}  # fmt: skip
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


def marked(highlight: str) -> list[tuple[str, bool]]:
    """`a «b» c` as [("a ", False), ("b", True), (" c", False)]: the template escapes each part
    and wraps the matches in <mark>, so no markup ever comes from a transcript."""
    parts: list[tuple[str, bool]] = []
    rest = highlight
    while OPEN in rest:
        before, _, after = rest.partition(OPEN)
        match, closed, rest = after.partition(CLOSE)
        if before:
            parts.append((before, False))
        parts.append((match, True))
        if not closed:
            rest = ""
    if rest:
        parts.append((rest, False))
    return parts


def clock(seconds: float | None) -> str:
    """1:02:03 or 2:03."""
    if seconds is None:
        return "-"
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def play_from(at: float) -> float:
    return round(max(0.0, at - LEAD_S), 2)


def capped_range(value: str, chunk: int = MEDIA_CHUNK) -> str:
    """`bytes=N-` (a browser's open-ended request, as it starts or seeks) as `bytes=N-(N+chunk-1)`:
    the reply is a chunk, and the browser asks for the next as it plays. Any other range as it is."""
    match = re.fullmatch(r"bytes=(\d+)-", value.strip())
    if match is None:
        return value
    start = int(match[1])
    return f"bytes={start}-{start + chunk - 1}"


def parse_day(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


# `status`'s columns (status/text.py), with how much of the archive was read after its state.
COLUMNS = (*STATUS_COLUMNS[:2], "read", *STATUS_COLUMNS[2:])


def archive_cells(a: ArchiveStatus) -> list[str]:
    """A day page's row of an archive, as text (the page's first rendering and its updates)."""
    slot, state, *rest = status_cells(a)
    read = f"{100 * (a.bytes_read or 0) / a.bytes_total:.1f}%" if a.bytes_total else "-"
    return [slot, state, read, *rest]


def day_json(report: DayReport) -> dict[str, Any]:
    return {
        "day": report.day.isoformat(),
        "totals": format_day_line(report),
        "complete": report.totals.complete,
        "columns": COLUMNS,
        "archives": [archive_cells(a) for a in report.archives],
    }

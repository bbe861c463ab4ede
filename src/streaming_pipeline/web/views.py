"""The web view's pure rules: reading a search form, cutting a highlight into marked parts,
clock times, the pages of results. No database, no server: unit tests call them directly."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ..day_specs import parse_days
from ..errors import ConfigError
from ..state.browse import SLOT_ORDERS, Choices
from ..state.search_text import CLOSE, OPEN
from ..state.segments import SearchHit, SearchQuery
from ..status.day import DayReport
from ..status.text import STATUS_COLUMNS, format_day_line, status_cells

if TYPE_CHECKING:
    from ..state.records import ArchiveStatus

PAGE = 10  # members a page of results (each with its best few hits)
HITS_PER_MEMBER = 3
MAX_QUERY = 200  # characters of a query
MAX_PAGE = 50  # pages: past it, narrow the query (ranking reads every candidate anyway)
LEAD_S = 1.0  # a hit plays from this long before it
# The most bytes an open-ended Range of a FLAC is answered with (web/app.py's MediaResponse).
# Chromium seeks in a FLAC without a seek table by bisection, a Range request a step: seeking to
# 30:00 of an hour-long one (search-scale --http) fetched 3.6 MiB before it played with 256 KiB
# chunks, 990 KiB with 64 KiB, ~650 KiB in 13 requests with 32 KiB, 500 KiB in 19 with 16 KiB.
MEDIA_CHUNK = 32 * 1024


class BadInput(ValueError):
    """A query string a page cannot take, with what was wrong in words a user reads (a 400)."""


# The longest value any parameter takes (a query is MAX_QUERY): longer is told, not cut.
MAX_VALUE = 200
# Parameters every page takes: the token (web/access.py takes it off).
ANY_PAGE = frozenset({"token"})


def shown(text: str | None) -> str:
    """A user's text as a message quotes it: escapes for what is not printable ASCII, 40 at most."""
    return ascii(text or "")[1:-1][:40]


def not_a_page(text: str | None) -> str:
    return f"page={shown(text)} is not a page number"


def read_params(query_string: bytes, allowed: Collection[str]) -> dict[str, str]:
    """The query string as {name: value}, or BadInput saying what is wrong: a parameter the page
    does not take, one given twice, bytes that are not UTF-8 (a lone surrogate as %ED%A0%80),
    a control character (a NUL reaches no database), a value past MAX_VALUE characters."""
    out: dict[str, str] = {}
    for part in query_string.split(b"&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition(b"=")
        try:
            name = unquote_to_bytes(raw_name.replace(b"+", b" ")).decode("utf-8")
            value = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput("the address holds bytes that are not UTF-8 text") from None
        quoted = shown(name)
        if name not in allowed and name not in ANY_PAGE:
            takes = ", ".join(sorted(allowed)) or "no parameters"
            raise BadInput(f"this page takes no parameter '{quoted}' (it takes: {takes})")
        if name in out:
            raise BadInput(f"{quoted} is given twice")
        out[name] = check_text(quoted, value)
    return out


def check_text(name: str, value: str) -> str:
    """`value` when it is text a page can take: no control character, at most MAX_VALUE long."""
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs") and c != "\t"), None)
    if bad is not None:
        raise BadInput(f"{name} holds a control character (U+{ord(bad):04X}); it takes text")
    if len(value) > MAX_VALUE:
        raise BadInput(f"{name} is {len(value):,} characters long; it takes at most {MAX_VALUE}")
    return value


# ?t= as people write a moment: 90, 90.5, 1:30, 01:02:03, 1m30s, 1h2m3s, 45s.
_CLOCK = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)")
_UNITS = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_moment(text: str) -> float | None:
    """Seconds from the start, or None when `text` is not a time (a negative one is not)."""
    t = text.strip().lower()
    if not t:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", t):
        return float(t)
    if m := _CLOCK.fullmatch(t):
        hours, minutes, seconds = float(m[1] or 0), float(m[2]), float(m[3])
        if (m[1] is not None and minutes >= 60) or seconds >= 60:
            return None
        return hours * 3600 + minutes * 60 + seconds
    if (m := _UNITS.fullmatch(t)) and any(m.groups()) and t[-1] in "hms":
        hours, minutes, seconds = (float(g or 0) for g in m.groups())
        return hours * 3600 + minutes * 60 + seconds
    return None


@dataclass(frozen=True)
class Moment:
    """Where a member's page starts its player, and what it says about the `t` it was given."""

    seconds: float
    note: str | None = None  # said on the page when `t` could not be followed


def start_moment(t: str | None, duration: float | None) -> Moment:
    """`?t=` read (parse_moment) against the member's length: a value that is not a time, or is
    past the end, starts at 0:00 and says why; never silently ignored."""
    if t is None or t == "":
        return Moment(0.0)
    at = parse_moment(t)
    if at is None and t.strip().startswith("-") and parse_moment(t.strip()[1:]) is not None:
        return Moment(0.0, f"t={shown(t)} is before the start; started at 0:00")
    if at is None:
        return Moment(0.0, f"t={shown(t)} is not a time (write 90, 1:30, 1m30s or 1:02:03); started at 0:00")
    if duration is not None and at >= duration:
        return Moment(0.0, f"t={shown(t)} is past the end ({clock(duration)}); started at 0:00")
    return Moment(round(at, 3))


def download_name(day: dt.date, slot: str, member: str, suffix: str) -> str:
    """A member's file saved under its whole path: `2025-01-25_06_00_field_clip_00000.flac`, so
    two members' files never save under one name (and nothing in it is a path or a quote)."""
    stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", member)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{day.isoformat()}_{slot}_{stem}").strip("._")
    return f"{safe[:180]}{suffix}"


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
        limits = {"q": MAX_QUERY, "days": 32, "slot": 64, "language": 16, "model": 200}
        fields = {name: params.get(name, "").strip() for name in limits}
        # the date pickers: from (and to) as a day or a range, where `days` is not given
        start, end = params.get("from", "").strip(), params.get("to", "").strip()
        if not fields["days"] and (start or end):
            start, end = sorted((start or end, end or start))  # a range picked backwards is the same range
            fields["days"] = start if start == end else f"{start}..{end}"
        fields["language"] = fields["language"].lower()
        page = page_number(params.get("page"))
        form = cls(fields["q"][:MAX_QUERY], fields["days"][:32], fields["slot"][:64], fields["language"][:16],
                   fields["model"][:200], min(page or 1, MAX_PAGE))  # fmt: skip
        long = next((n for n, limit in limits.items() if len(fields[n]) > limit), None)
        if long is not None:
            problem = f"{long} is {len(fields[long])} characters long; it takes at most {limits[long]}"
        elif page is None:
            problem = not_a_page(params.get("page"))
        elif page > MAX_PAGE:
            problem = (
                f"results stop at page {MAX_PAGE}: narrow the search (a phrase in quotes, days, a language)"
            )
        else:
            try:
                form.query()
                return form
            except ConfigError as exc:
                problem = str(exc)
        return replace(form, problem=problem)

    def span(self) -> tuple[dt.date | None, dt.date | None]:
        """The first and last day the search is narrowed to (None: no bound)."""
        if not self.days:
            return None, None
        days = parse_days([self.days])
        return min(days), max(days)

    def unknown_choice(self, choices: Choices) -> str | None:
        """What the form asks for that the days do not hold (a slot written `06:00`, a language
        written `english`): said, so that a search never silently finds nothing for it."""
        for name, value, have in (
            ("slot", self.slot, choices.slots),
            ("language", self.language, choices.languages),
            ("model", self.model, choices.models),
        ):
            if value and value not in have:
                where = f"on {self.days}" if self.days else "on any day"
                listed = ", ".join(have[:20]) + (f" and {len(have) - 20} more" if len(have) > 20 else "")
                return f"no {name} {value!r} {where}; the done members there have: {listed or 'none'}"
        return None

    def query(self) -> SearchQuery:
        first, last = self.span()
        return SearchQuery(
            self.text, first_day=first, last_day=last, language=self.language or None,
            slot=self.slot or None, model=self.model or None, limit=PAGE, offset=(self.page - 1) * PAGE,
        )  # fmt: skip

    def link(self, page: int) -> dict[str, str]:
        """The query string of another page of the same search."""
        values = {"q": self.text, "days": self.days, "slot": self.slot, "language": self.language,
                  "model": self.model, "page": str(page)}  # fmt: skip
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


@dataclass(frozen=True)
class SlotListing:
    """A slot page's order and page, as its query string gave them, with what was wrong."""

    sort: str = "name"
    page: int = 1
    problem: str | None = None

    @classmethod
    def of(cls, params: Mapping[str, str]) -> SlotListing:
        sort = params.get("sort", "name") or "name"
        if sort not in SLOT_ORDERS:
            return cls(problem=f"sort={shown(sort)} is not an order (it takes: {', '.join(SLOT_ORDERS)})")
        page = page_number(params.get("page"))
        if page is None:
            return cls(sort, problem=not_a_page(params.get("page")))
        return cls(sort, page)

    def link(self, **change: str | int) -> dict[str, str]:
        values = {"sort": self.sort, "page": str(self.page), **{k: str(v) for k, v in change.items()}}
        return {
            k: v
            for k, v in values.items()
            if not (k == "sort" and v == "name") and not (k == "page" and v == "1")
        }


MEMBER_HITS = 500  # a member page marks at most this many of its segments that match `q`


def member_query(text: str, archive: str, member: str) -> SearchQuery | None:
    """The search a member's page runs to mark its hits (`?q=`, as a hit's link carries it), or
    None when there is nothing to look for."""
    text = text.strip()[:MAX_QUERY]
    if not text:
        return None
    return SearchQuery(text, archive=archive, member=member, limit=MEMBER_HITS)


@dataclass(frozen=True)
class HitMarks:
    """Which of a member's segments match the query (by their start) and the words the search
    matched in each, for the page to mark."""

    segments: dict[float, list[tuple[str, bool]]]  # start (to 10 ms) -> the highlight, cut by `marked`
    words: frozenset[str]  # matched words, folded (`fold`), for segments shown word by word

    def word(self, text: str) -> bool:
        return fold(text) in self.words

    def at(self, start: float) -> list[tuple[str, bool]] | None:
        """The highlight of the segment starting at `start`, when it is a hit."""
        return self.segments.get(round(start, 2))


def fold(word: str) -> str:
    """A word as the page compares it with a match: lower case, no punctuation around it."""
    return word.strip().strip(".,;:!?\"'()[]«»“”¿¡").casefold()


def hit_marks(hits: Sequence[SearchHit]) -> HitMarks:
    segments = {round(h.start, 2): marked(h.highlight) for h in hits}  # a hit's start is to 10 ms
    words = frozenset(fold(part) for parts in segments.values() for part, hit in parts if hit)
    return HitMarks(segments, words)


def page_number(text: str | None) -> int | None:
    """`page=` as a page number from 1, or None when it is not one."""
    if text is None or text == "":
        return 1
    if not re.fullmatch(r"[0-9]{1,6}", text) or int(text) < 1:
        return None
    return int(text)


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
        "settled": report.totals.settled,
        "columns": COLUMNS,
        "archives": [archive_cells(a) for a in report.archives],
    }

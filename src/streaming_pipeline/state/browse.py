"""What the web view reads: the days at a glance, one member with its transcript and provenance
(the transcripts it replaced are transcripts.py's `history`). Read-only statements: the web
view's role needs only SELECT (docs/web.md: a read-only role)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..transcript import Provenance
from .db import Table
from .records import x_realtime

# One row per day from the archive_status view, with the day's searchable segments.
_DAYS = """
    SELECT s.day, count(*) AS archives,
           jsonb_object_agg(s.state, s.n) AS by_state,
           sum(s.done) AS done, sum(s.failed) AS failed, sum(s.rejected) AS rejected,
           sum(s.audio_hours) AS audio_hours, sum(s.elapsed_s) AS elapsed_s,
           (SELECT coalesce(sum(searchable_segments), 0) FROM audio_files f
             WHERE f.day = s.day AND f.status = 'done') AS segments
    FROM (
        SELECT day, CASE WHEN state = 'running' AND NOT live THEN 'running?' ELSE state END AS state,
               count(*) AS n, sum(done) AS done, sum(failed) AS failed, sum(rejected) AS rejected,
               sum(audio_hours) AS audio_hours, sum(elapsed_s) AS elapsed_s
        FROM archive_status
        WHERE (%(first)s::date IS NULL OR day >= %(first)s) AND (%(last)s::date IS NULL OR day <= %(last)s)
        GROUP BY 1, 2
    ) s
    GROUP BY s.day ORDER BY s.day DESC LIMIT %(limit)s
"""

_MEMBER = """
    SELECT id, day, slot, archive, member, status, duration_s, size_bytes, language,
           language_probability, model, provenance, transcribed_at, remote_path, timestamps,
           subtitles, error, searchable_segments, transcript
    FROM audio_files WHERE id = %s
"""


@dataclass(frozen=True)
class DayRow:
    """A day on the web view's first page."""

    day: dt.date
    archives: int
    by_state: dict[str, int]  # "running?": a lease that expired
    done: int
    failed: int
    rejected: int
    audio_hours: float
    x_realtime: float | None  # audio seconds per second its archives' runs took
    segments: int  # searchable


@dataclass(frozen=True)
class TimedText:
    """A segment or a word: what the player highlights and seeks to."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class SegmentView:
    start: float
    end: float
    text: str
    language: str | None
    words: tuple[TimedText, ...]
    speaker: str | None = None  # S1, S2, ... within the member


@dataclass(frozen=True)
class SpeakerView:
    """One of a member's speakers, its voice across the day, and where else that voice speaks."""

    speaker: str
    seconds: float
    voice: str | None
    elsewhere: tuple[tuple[int, str, str], ...] = ()  # (member id, slot, member path) of the same voice


@dataclass(frozen=True)
class MemberView:
    id: int
    day: dt.date
    slot: str
    archive: str
    member: str
    status: str
    duration_s: float | None
    size_bytes: int | None
    language: str | None
    language_probability: float | None
    model: str | None
    provenance: Provenance | None
    transcribed_at: dt.datetime | None
    remote_path: str | None
    timestamps: str | None
    subtitles: tuple[str, ...]  # the files beside its FLAC and JSON, as recorded (srt, vtt, rttm)
    error: str | None
    indexed: bool  # its segments are recorded (else they are read from its JSON)
    transcript: str | None


@dataclass(frozen=True)
class Choices:
    """What a search can be narrowed to: the values the done members hold."""

    slots: tuple[str, ...]
    languages: tuple[str, ...]
    models: tuple[str, ...]


@dataclass(frozen=True)
class SlotMember:
    """A row of a slot's page: a member and how far it got."""

    id: int
    member: str
    duration_s: float | None
    language: str | None
    status: str
    model: str | None


@dataclass(frozen=True)
class SlotPage:
    """One page of a slot's members, and how many there are in all."""

    members: list[SlotMember]
    total: int


# A slot's members in one of these orders; the member's name breaks ties, so pages never overlap.
SLOT_ORDERS = {
    "name": "member",
    "-name": "member DESC",
    "duration": "duration_s NULLS FIRST, member",
    "-duration": "duration_s DESC NULLS LAST, member",
}
_SLOT_MEMBERS = {
    order: "SELECT id, member, duration_s, language, status, model, count(*) OVER () AS total"
    " FROM audio_files WHERE day = %s AND slot = %s ORDER BY " + by + " LIMIT %s OFFSET %s"
    for order, by in SLOT_ORDERS.items()
}  # whole statements made from the constants above: a caller picks one by its key


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


class BrowseQueries(Table):
    """The web view's reads (any thread: each call is one read-only transaction)."""

    def days(
        self, first: dt.date | None = None, last: dt.date | None = None, limit: int = 400
    ) -> list[DayRow]:
        rows = self._db.query(_DAYS, {"first": first, "last": last, "limit": limit})
        return [
            DayRow(
                day=r["day"],
                archives=int(r["archives"]),
                by_state={k: int(v) for k, v in sorted(r["by_state"].items())},
                done=int(r["done"]),
                failed=int(r["failed"]),
                rejected=int(r["rejected"]),
                audio_hours=float(r["audio_hours"]),
                x_realtime=x_realtime(float(r["audio_hours"]), _float(r["elapsed_s"])),
                segments=int(r["segments"]),
            )
            for r in rows
        ]

    def member(self, member_id: int) -> MemberView | None:
        rows = self._db.query(_MEMBER, (member_id,))
        if not rows:
            return None
        r = rows[0]
        return MemberView(
            id=int(r["id"]),
            day=r["day"],
            slot=r["slot"],
            archive=r["archive"],
            member=r["member"],
            status=r["status"],
            duration_s=r["duration_s"],
            size_bytes=r["size_bytes"],
            language=r["language"],
            language_probability=r["language_probability"],
            model=r["model"],
            provenance=Provenance.stored(r["provenance"]),
            transcribed_at=r["transcribed_at"],
            remote_path=r["remote_path"],
            timestamps=r["timestamps"],
            subtitles=tuple(filter(None, (r["subtitles"] or "").split(","))),
            error=r["error"],
            indexed=r["searchable_segments"] is not None,
            transcript=r["transcript"],
        )

    def slot_members(self, day: dt.date, slot: str, order: str, limit: int, offset: int) -> SlotPage:
        """A page of the members of the day's archive in `slot`, in SLOT_ORDERS[order]."""
        rows = self._db.query(_SLOT_MEMBERS[order], (day, slot, limit, offset))
        total = int(rows[0]["total"]) if rows else self._count(day, slot)
        members = [
            SlotMember(
                int(r["id"]), r["member"], _float(r["duration_s"]), r["language"], r["status"], r["model"]
            )
            for r in rows
        ]
        return SlotPage(members, total)

    def _count(self, day: dt.date, slot: str) -> int:
        sql = "SELECT count(*) AS n FROM audio_files WHERE day = %s AND slot = %s"
        return int(self._db.query(sql, (day, slot))[0]["n"])

    def segments(self, archive: str, member: str) -> list[SegmentView]:
        """A member's recorded segments in order, with their words where they were timed."""
        rows = self._db.query(
            "SELECT start_s, end_s, text, language, words, speaker FROM segments"
            " WHERE archive = %s AND member = %s ORDER BY seq",
            (archive, member),
        )
        return [
            SegmentView(
                float(r["start_s"]),
                float(r["end_s"]),
                r["text"],
                r["language"],
                tuple(TimedText(float(w[0]), float(w[1]), str(w[2])) for w in r["words"] or ()),
                r["speaker"],
            )
            for r in rows
        ]

    def speakers(self, archive: str, member: str, day: dt.date) -> list[SpeakerView]:
        """A member's speakers in order of first appearance, each with the day's other members in
        which its voice speaks (`voices` gave them; none before it ran)."""
        rows = self._db.query(
            "SELECT speaker, seconds, voice FROM member_speakers WHERE archive = %s AND member = %s"
            " ORDER BY first_s",
            (archive, member),
        )
        voiced = [r["voice"] for r in rows if r["voice"]]
        others: dict[str, list[tuple[int, str, str]]] = {}
        if voiced:
            for o in self._db.query(
                "SELECT DISTINCT s.voice, f.id, f.slot, f.member FROM member_speakers s"
                " JOIN audio_files f USING (archive, member)"
                " WHERE f.day = %s AND f.status = 'done' AND s.voice = ANY(%s)"
                " AND NOT (s.archive = %s AND s.member = %s) ORDER BY f.slot, f.member LIMIT 200",
                (day, voiced, archive, member),
            ):
                others.setdefault(o["voice"], []).append((int(o["id"]), o["slot"], o["member"]))
        return [
            SpeakerView(r["speaker"], float(r["seconds"]), r["voice"], tuple(others.get(r["voice"], ())))
            for r in rows
        ]

    def choices(self, first: dt.date | None = None, last: dt.date | None = None) -> Choices:
        """The slots, languages and models of the done members of [first, last] (all days when
        None): what the search form offers to choose from."""
        rows = self._db.query(
            "SELECT array_agg(DISTINCT slot) AS slots, array_agg(DISTINCT language) AS languages,"
            " array_agg(DISTINCT model) AS models FROM audio_files WHERE status = 'done'"
            " AND (%(first)s::date IS NULL OR day >= %(first)s)"
            " AND (%(last)s::date IS NULL OR day <= %(last)s)",
            {"first": first, "last": last},
        )
        r = rows[0]

        def values(key: str) -> tuple[str, ...]:
            return tuple(sorted(v for v in r[key] or () if v))

        return Choices(values("slots"), values("languages"), values("models"))

"""Done members' transcripts as `retranscribe` sees them: which were made another way, replacing
one while keeping the one it replaced (`transcript_history`), and what made a day's transcripts."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from ..transcript import Provenance
from .db import Database, Table, write_isolating
from .members import member_values
from .records import MEMBER_COLUMNS, MemberRecord
from .segments import SegmentTable

log = logging.getLogger(__name__)

# A member's transcript is stale for the current settings when its key differs; `only_model`
# narrows that to transcripts made by one model (as named).
# Stale: made another way (its key), or with `speaker_model` given (`--speakers-only`), without
# that speaker model's speakers, whatever made its words.
_STALE = """
    status = 'done'
    AND CASE WHEN %(speaker_model)s::text IS NULL THEN transcript_key IS DISTINCT FROM %(key)s
             ELSE (provenance->>'speaker_model') IS DISTINCT FROM %(speaker_model)s END
    AND (%(only_model)s::text IS NULL OR model = %(only_model)s)
"""
_REPLACED = (
    "transcript", "language", "language_probability", "model", "provenance", "transcript_key",
    "fallback", "timestamps", "subtitles", "transcribed_at", "searchable_segments",
)  # fmt: skip


@dataclass(frozen=True)
class StaleMember:
    member: str
    remote_path: str
    duration_s: float


@dataclass(frozen=True)
class StaleArchive:
    archive: str
    day: dt.date
    slot: str
    path: str
    members: int
    audio_hours: float


@dataclass(frozen=True)
class ModelCount:
    """How many of a day's done members one model and its settings made."""

    model: str | None  # None: made before provenance was recorded
    transcript_key: str | None
    members: int
    audio_hours: float


@dataclass(frozen=True)
class PastTranscript:
    """One that re-transcription replaced (transcript_history)."""

    model: str | None
    provenance: Provenance | None
    language: str | None
    transcribed_at: dt.datetime | None
    replaced_at: dt.datetime
    text: str | None


class TranscriptTable(Table):
    """The transcript columns of `audio_files`, and `transcript_history`."""

    def __init__(self, db: Database, segments: SegmentTable) -> None:
        super().__init__(db)
        self._segments = segments

    def stale(
        self, archive: str, *, key: str, only_model: str | None, speaker_model: str | None = None
    ) -> list[StaleMember]:
        rows = self._db.query(
            "SELECT member, remote_path, duration_s FROM audio_files WHERE archive = %(archive)s AND"
            + _STALE
            + "ORDER BY member",
            {"archive": archive, "key": key, "only_model": only_model, "speaker_model": speaker_model},
        )
        return [StaleMember(r["member"], r["remote_path"], float(r["duration_s"] or 0.0)) for r in rows]

    def stale_archives(
        self, day: dt.date, *, key: str, only_model: str | None, speaker_model: str | None = None
    ) -> list[StaleArchive]:
        """The day's archives with members to re-transcribe (whatever the archives' state)."""
        rows = self._db.query(
            "SELECT a.archive, a.day, a.slot, a.path, count(*) AS members,"
            " coalesce(sum(f.duration_s), 0) / 3600 AS audio_hours"
            " FROM audio_files f JOIN archives a USING (archive) WHERE f.day = %(day)s AND"
            + _STALE
            + "GROUP BY a.archive ORDER BY a.slot, a.archive",
            {"day": day, "key": key, "only_model": only_model, "speaker_model": speaker_model},
        )
        return [
            StaleArchive(
                r["archive"], r["day"], r["slot"], r["path"], int(r["members"]), float(r["audio_hours"])
            )
            for r in rows
        ]

    def replace(self, archive: str, records: Sequence[MemberRecord]) -> int:
        """New transcripts of done members, each replacing the current one, which moves to
        `transcript_history` (once: a member already holding this key is left as it is). One
        fenced transaction (a member whose new values the database refuses keeps its old
        transcript, the others are replaced); returns how many members changed."""
        if not records:
            return 0
        keep = """
            INSERT INTO transcript_history (archive, member, transcript, language,
                language_probability, model, provenance, transcript_key, transcribed_at)
            SELECT archive, member, transcript, language, language_probability, model, provenance,
                   transcript_key, coalesce(transcribed_at, updated_at)
            FROM audio_files WHERE archive = %s AND member = %s AND status = 'done'
                AND transcript_key IS DISTINCT FROM %s
        """
        updates = ", ".join(f"{c} = %s" for c in _REPLACED)  # constant column names
        update = f"""
            UPDATE audio_files SET {updates}, updated_at = now()
            WHERE archive = %s AND member = %s AND status = 'done' AND transcript_key IS DISTINCT FROM %s
        """

        def write(rows: Sequence[MemberRecord]) -> int:
            return self._db.transaction(lambda cur: replaced(cur, rows), "replace transcripts", fenced=True)

        def replaced(cur: psycopg.Cursor[Any], rows: Sequence[MemberRecord]) -> int:
            changed = []
            for r in rows:
                values = dict(zip(MEMBER_COLUMNS, member_values(r), strict=True))
                cur.execute(keep, (archive, r.member, r.transcript_key))
                cur.execute(update, (*(values[c] for c in _REPLACED), archive, r.member, r.transcript_key))
                if cur.rowcount:
                    changed.append(r)
            self._segments.write(cur, archive, changed)  # the old segments go; history keeps the text
            return len(changed)

        counts, refused = write_isolating(records, write)
        for r, exc in refused:  # done, with its old transcript: left as it was
            log.warning("%s: %s kept its transcript: the new one was refused (%s)", archive, r.member, exc)
        return sum(counts)

    def models(self, day: dt.date) -> list[ModelCount]:
        rows = self._db.query(
            "SELECT model, transcript_key, count(*) AS members,"
            " coalesce(sum(duration_s), 0) / 3600 AS audio_hours FROM audio_files"
            " WHERE day = %s AND status = 'done' GROUP BY model, transcript_key ORDER BY members DESC, model",
            (day,),
        )
        return [
            ModelCount(r["model"], r["transcript_key"], int(r["members"]), float(r["audio_hours"]))
            for r in rows
        ]

    def history(self, archive: str, member: str) -> list[PastTranscript]:
        """The transcripts re-transcription replaced, newest first (a member's web page)."""
        rows = self._db.query(
            "SELECT model, provenance, language, transcribed_at, replaced_at, transcript"
            " FROM transcript_history WHERE archive = %s AND member = %s ORDER BY id DESC",
            (archive, member),
        )
        return [
            PastTranscript(
                r["model"], Provenance.stored(r["provenance"]), r["language"], r["transcribed_at"],
                r["replaced_at"], r["transcript"],
            )
            for r in rows
        ]  # fmt: skip

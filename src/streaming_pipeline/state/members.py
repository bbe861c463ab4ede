"""Members' rows (audio_files) and the members in flight when a worker died (member_crashes)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import RefusedValues
from .db import Database, Table, write_isolating
from .records import MEMBER_COLUMNS, ArchiveKey, MemberRecord
from .segments import SegmentTable
from .states import MemberStatus

log = logging.getLogger(__name__)
# A refusal's reason, as a member's error records it: the server's message can quote the value.
REASON_CHARS = 300


class MemberTable(Table):
    """One row per member; a row never goes back from `done`. Writes are one statement per batch."""

    def __init__(self, db: Database, segments: SegmentTable) -> None:
        super().__init__(db)
        self._segments = segments

    def done(self, archive: str) -> set[str]:
        def read(cur: psycopg.Cursor[Any]) -> set[str]:
            cur.execute("SELECT member FROM audio_files WHERE archive = %s AND status = 'done'", (archive,))
            return {row["member"] for row in cur}

        return self._db.transaction(read, "resume lookup")

    def uploading(self, archive: str) -> list[tuple[str, str, tuple[str, ...]]]:
        """(member, remote_path, subtitle formats) of members whose upload an earlier run started
        but never confirmed in the database."""
        rows = self._db.query(
            "SELECT member, remote_path, subtitles FROM audio_files"
            " WHERE archive = %s AND status = 'uploading' AND remote_path IS NOT NULL",
            (archive,),
        )
        return [
            (r["member"], r["remote_path"], tuple(filter(None, (r["subtitles"] or "").split(","))))
            for r in rows
        ]

    def record(self, key: ArchiveKey, records: Sequence[MemberRecord]) -> list[MemberRecord]:
        """Upsert a batch of member rows in one round trip, with the segments of those that carry
        a transcript (searchable once the member is done); `done` rows are never overwritten.

        A member whose own values the database refuses is recorded `failed` with the reason
        instead, and the batch's other members as they are. Returns those failed rows."""
        if not records:
            return []
        _, refused = write_isolating(records, lambda rows: self._write(key, rows))
        failed = [
            MemberRecord(
                r.member,
                MemberStatus.FAILED,
                size_bytes=r.size_bytes,
                full_name=r.full_name,
                error=f"its transcript could not be recorded: {refusal_reason(exc)}",
            )
            for r, exc in refused
        ]
        for r in failed:
            log.warning("member %r failed: %s", r.member, r.error)
        if failed:
            self._write(key, failed)
        return failed

    def _write(self, key: ArchiveKey, records: Sequence[MemberRecord]) -> None:
        cols = ", ".join(MEMBER_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in MEMBER_COLUMNS)
        placeholders = ", ".join(["%s"] * (4 + len(MEMBER_COLUMNS)))
        sql = f"""
            INSERT INTO audio_files (day, slot, archive, member, {cols})
            VALUES ({placeholders})
            ON CONFLICT (archive, member) DO UPDATE SET {updates}, updated_at = now()
            WHERE audio_files.status <> 'done'
            RETURNING member
        """
        rows = [(key.day, key.slot, key.archive, r.member, *member_values(r)) for r in records]

        def write(cur: psycopg.Cursor[Any]) -> None:
            cur.executemany(sql, rows, returning=True)
            written: set[str] = set()
            while True:
                written.update(row["member"] for row in cur.fetchall())
                if not cur.nextset():
                    break
            self._segments.write(cur, key.archive, [r for r in records if r.member in written])

        self._db.transaction(write, "record members", fenced=True)

    def mark_done(self, archive: str, members: Iterable[tuple[str, str]]) -> list[str]:
        """Members whose upload rsync confirmed: (member, remote_path) pairs, one statement.
        Returns the members this call made `done` (none that already were)."""
        pairs = list(members)
        if not pairs:
            return []
        sql = """
            UPDATE audio_files AS f SET status = 'done', remote_path = d.remote_path,
                   error = NULL, updated_at = now()
            FROM unnest(%s::text[], %s::text[]) AS d(member, remote_path)
            WHERE f.archive = %s AND f.member = d.member AND f.status <> 'done'
            RETURNING f.member
        """
        params = ([m for m, _ in pairs], [p for _, p in pairs], archive)

        def mark(cur: psycopg.Cursor[Any]) -> list[str]:
            cur.execute(sql, params)
            return [row["member"] for row in cur.fetchall()]

        return self._db.transaction(mark, "mark done", fenced=True)

    def mark_in_flight(self, archive: str, members: Sequence[str]) -> None:
        """`members` go to the decoder: were the process to die now, they were in flight."""
        sql = """
            INSERT INTO member_crashes (archive, member, in_flight)
            SELECT %s, m, true FROM unnest(%s::text[]) AS m
            ON CONFLICT (archive, member) DO UPDATE SET in_flight = true
        """
        if members:
            self._db.transaction(
                lambda cur: cur.execute(sql, (archive, list(members))), "mark in flight", fenced=True
            )

    def clear_in_flight(self, archive: str, members: Sequence[str]) -> None:
        """`members` came back from the decoder (transcribed or failed)."""
        sql = (
            "UPDATE member_crashes SET in_flight = false"
            " WHERE archive = %s AND member = ANY(%s) AND in_flight"
        )
        if members:
            self._db.transaction(
                lambda cur: cur.execute(sql, (archive, list(members))), "clear in flight", fenced=True
            )

    def count_crashes(self, archive: str) -> dict[str, int]:
        """At the start of a run that holds the archive: members still in flight belong to a run
        that died; count it. Returns every member not done with the runs it crashed."""
        count = (
            "UPDATE member_crashes SET crashed_runs = crashed_runs + 1, in_flight = false"
            " WHERE archive = %s AND in_flight"
        )
        read = """
            SELECT c.member, c.crashed_runs FROM member_crashes c
            LEFT JOIN audio_files f ON f.archive = c.archive AND f.member = c.member
            WHERE c.archive = %s AND c.crashed_runs > 0 AND f.status IS DISTINCT FROM 'done'
        """

        def counted(cur: psycopg.Cursor[Any]) -> dict[str, int]:
            cur.execute(count, (archive,))
            cur.execute(read, (archive,))
            return {row["member"]: int(row["crashed_runs"]) for row in cur.fetchall()}

        return self._db.transaction(counted, "count crashes", fenced=True)

    def mark_failed(self, archive: str, members: Sequence[str], error: str) -> None:
        if not members:
            return
        sql = """
            UPDATE audio_files SET status = 'failed', error = %s, updated_at = now()
            WHERE archive = %s AND member = ANY(%s) AND status <> 'done'
        """
        self._db.transaction(
            lambda cur: cur.execute(sql, (error, archive, list(members))), "mark failed", fenced=True
        )

    def iter_done(self, day: dt.date, chunk: int = 500) -> Iterator[list[dict[str, Any]]]:
        """A day's done members in (archive, member) order, `chunk` rows per round trip (keyset
        pagination: no long transaction, no server-side cursor to lose on a reconnect)."""
        sql = """
            SELECT archive, slot, member, duration_s, language, transcript, remote_path
            FROM audio_files WHERE day = %s AND status = 'done' AND (archive, member) > (%s, %s)
            ORDER BY archive, member LIMIT %s
        """
        after = ("", "")
        while True:
            rows = self._db.query(sql, (day, *after, chunk))
            if not rows:
                return
            yield rows
            after = (rows[-1]["archive"], rows[-1]["member"])


def member_values(record: MemberRecord) -> list[Any]:
    """`record`'s MEMBER_COLUMNS values as psycopg sends them (JSON as jsonb)."""
    values = {c: getattr(record, c) for c in MEMBER_COLUMNS}
    if record.provenance is not None:
        values["provenance"] = Jsonb(record.provenance.as_json())
    return list(values.values())


def refusal_reason(exc: RefusedValues) -> str:
    """The server's reason, short and printable (its message may quote the refused value)."""
    text = "".join(c if c.isprintable() else " " for c in str(exc))
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"

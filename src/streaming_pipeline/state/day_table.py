"""A day's archives as registered by process-day, and the day's own row."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from .db import Table
from .records import DAY_COLUMNS, ArchiveKey, ArchiveStatus


class DayTable(Table):
    """`days`, and the `archive_status` view of a day."""

    def register_archives(self, day: dt.date, archives: Sequence[tuple[ArchiveKey, str, int]]) -> None:
        """Rows for a day's archives ((key, path, size)), so that status lists them before they start."""
        sql = """
            INSERT INTO archives (archive, day, slot, path, bytes_total) VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (archive) DO UPDATE SET path = EXCLUDED.path, bytes_total = EXCLUDED.bytes_total
            WHERE archives.state <> 'done'
        """
        rows = [(k.archive, k.day, k.slot, path, size) for k, path, size in archives]
        self._db.transaction(lambda cur: cur.executemany(sql, rows), "register archives")

    def archive_status(self, day: dt.date) -> list[ArchiveStatus]:
        rows = self._db.query("SELECT * FROM archive_status WHERE day = %s ORDER BY slot, archive", (day,))
        return [ArchiveStatus.from_row(r) for r in rows]

    def record(self, day: dt.date, **fields: Any) -> None:
        """Upsert the day's row (state, counts, job ids, timestamps, summary) with the given fields."""
        from psycopg.types.json import Jsonb

        unknown = set(fields) - DAY_COLUMNS
        if unknown:
            raise ValueError(f"not columns of days: {sorted(unknown)}")
        values = {k: Jsonb(v) if k == "summary" else v for k, v in fields.items()}
        cols = ", ".join(values)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
        sql = (
            f"INSERT INTO days (day, {cols}) VALUES (%s{', %s' * len(values)})"
            f" ON CONFLICT (day) DO UPDATE SET {updates}"
        )
        self._db.transaction(lambda cur: cur.execute(sql, (day, *values.values())), "record day")

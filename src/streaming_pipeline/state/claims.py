"""Taking, renewing and giving up the lease on an archive's (or a dataset run's) row."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from .db import Database, leased_sql
from .records import ArchiveKey


class LeaseTable:
    """The lease columns of `archives` and `dataset_runs` (lease.py holds and renews them)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(
        self,
        key: ArchiveKey,
        *,
        path: str,
        owner: dict[str, Any],
        lease_s: float,
        may_take: Callable[[dict[str, Any]], bool],
    ) -> tuple[int | None, dict[str, Any]]:
        """Take `key`'s lease if it is free, expired, or `may_take(row)` says its holder is gone:
        (new token, row). Otherwise (None, the holder's row). One short transaction."""

        def claim(cur: psycopg.Cursor[Any]) -> tuple[int | None, dict[str, Any]]:
            cur.execute(
                "INSERT INTO archives (archive, day, slot, path) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (archive) DO NOTHING",
                (key.archive, key.day, key.slot, path),
            )
            cur.execute(
                "SELECT *, lease_until > now() AS leased FROM archives WHERE archive = %s FOR UPDATE",
                (key.archive,),
            )  # claimers of one archive go one at a time; a fenced write in flight finishes first
            row = cur.fetchone()
            if row["leased"] and not may_take(row):
                return None, row
            return self._take(cur, key.archive, owner, lease_s), row

        return self._db.transaction(claim, "claim archive")

    def claim_next(
        self, days: Sequence[dt.date], *, owner: dict[str, Any], lease_s: float
    ) -> tuple[ArchiveKey, int] | None:
        """The first archive of `days` that is not done and whose lease is free or expired,
        claimed; None when there is none (all done, or all held). Claimers skip each other's
        candidates (SKIP LOCKED) instead of queueing on them."""

        def claim(cur: psycopg.Cursor[Any]) -> tuple[ArchiveKey, int] | None:
            cur.execute(
                """
                SELECT archive, day, slot FROM archives
                WHERE day = ANY(%s) AND state <> 'done' AND (lease_until IS NULL OR lease_until <= now())
                ORDER BY day, slot, archive LIMIT 1 FOR UPDATE SKIP LOCKED
                """,
                (list(days),),
            )
            row = cur.fetchone()
            if row is None:
                return None
            key = ArchiveKey(row["archive"], row["day"], row["slot"])
            return key, self._take(cur, key.archive, owner, lease_s)

        return self._db.transaction(claim, "claim next archive")

    @staticmethod
    def _take(cur: psycopg.Cursor[Any], archive: str, owner: dict[str, Any], lease_s: float) -> int:
        cur.execute(
            """
            UPDATE archives SET lease_token = lease_token + 1,
                   lease_until = now() + make_interval(secs => %s), heartbeat_at = now(),
                   slurm_job_id = %s, host = %s, pid = %s
            WHERE archive = %s RETURNING lease_token
            """,
            (lease_s, owner["slurm_job_id"], owner["host"], owner["pid"], archive),
        )
        return int(cur.fetchone()["lease_token"])

    def renew(
        self, key: str, token: int, lease_s: float, *, table: str = "archives"
    ) -> dict[str, Any] | None:
        """Extend the lease; None while it is still ours, else the row of whoever took it."""
        beat = ", heartbeat_at = now()" if table == "archives" else ", updated_at = now()"
        update = leased_sql(
            table,
            "UPDATE {table} SET lease_until = now() + make_interval(secs => %s)" + beat
            + " WHERE {key} = %s AND lease_token = %s",
        )  # fmt: skip
        holder = leased_sql(table, "SELECT slurm_job_id, host, pid FROM {table} WHERE {key} = %s")

        def renew(cur: psycopg.Cursor[Any]) -> dict[str, Any] | None:
            cur.execute(update, (lease_s, key, token))
            if cur.rowcount == 1:
                return None
            cur.execute(holder, (key,))
            return cur.fetchone() or {"slurm_job_id": None, "host": None, "pid": None}

        return self._db.transaction(renew, "renew lease")

    def release(self, key: str, token: int, *, table: str = "archives") -> None:
        """Give the lease up (the next claimer need not wait for it to expire)."""
        sql = leased_sql(table, "UPDATE {table} SET lease_until = NULL WHERE {key} = %s AND lease_token = %s")
        self._db.transaction(lambda cur: cur.execute(sql, (key, token)), "release lease")

    def unfinished(self, days: Sequence[dt.date]) -> int:
        """Archives of `days` not done yet (held or not)."""
        rows = self._db.query(
            "SELECT count(*) AS n FROM archives WHERE day = ANY(%s) AND state <> 'done'", (list(days),)
        )
        return int(rows[0]["n"])

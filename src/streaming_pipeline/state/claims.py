"""Taking, renewing and giving up the lease on an archive's (or a dataset run's) row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from .db import Table, leased_sql
from .records import ArchiveKey


class LeaseTable(Table):
    """The lease columns of `archives` and `dataset_runs` (lease.py holds and renews them)."""

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
            return take_lease(cur, key.archive, owner, lease_s), row

        return self._db.transaction(claim, "claim archive")

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


def take_lease(cur: psycopg.Cursor[Any], archive: str, owner: dict[str, Any], lease_s: float) -> int:
    """A new lease on a row the transaction has locked: the next token, the holder's identity."""
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

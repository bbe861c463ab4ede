"""Taking, renewing and giving up the lease on an archive's (or a dataset run's) row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from .db import Table, leased_sql, one
from .records import ArchiveKey, Claim, Holder, Owner
from .states import ArchiveState


class LeaseTable(Table):
    """The lease columns of `archives` and `dataset_runs` (lease.py holds and renews them)."""

    def claim(
        self,
        key: ArchiveKey,
        *,
        path: str,
        owner: Owner,
        lease_s: float,
        may_take: Callable[[Holder], bool],
    ) -> Claim:
        """Take `key`'s lease if it is free, expired, or `may_take(holder)` says its holder is
        gone. One short transaction."""

        def claim(cur: psycopg.Cursor[Any]) -> Claim:
            cur.execute(
                "INSERT INTO archives (archive, day, slot, path) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (archive) DO NOTHING",
                (key.archive, key.day, key.slot, path),
            )
            cur.execute(
                "SELECT *, lease_until > now() AS leased FROM archives WHERE archive = %s FOR UPDATE",
                (key.archive,),
            )  # claimers of one archive go one at a time; a fenced write in flight finishes first
            row = one(cur)
            holder, leased = Holder.of(row), bool(row["leased"])
            if leased and not may_take(holder):
                return Claim(None, holder, leased, stopping=row["state"] == ArchiveState.INTERRUPTED)
            return Claim(take_lease(cur, key.archive, owner, lease_s), holder, leased)

        return self._db.transaction(claim, "claim archive")

    def renew(self, key: str, token: int, lease_s: float, *, table: str = "archives") -> Holder | None:
        """Extend the lease; None while it is still ours, else whoever took it."""
        beat = ", heartbeat_at = now()" if table == "archives" else ", updated_at = now()"
        update = leased_sql(
            table,
            "UPDATE {table} SET lease_until = now() + make_interval(secs => %s)" + beat
            + " WHERE {key} = %s AND lease_token = %s",
        )  # fmt: skip
        holder = leased_sql(table, "SELECT slurm_job_id, host, pid FROM {table} WHERE {key} = %s")

        def renew(cur: psycopg.Cursor[Any]) -> Holder | None:
            cur.execute(update, (lease_s, key, token))
            if cur.rowcount == 1:
                return None
            cur.execute(holder, (key,))
            return Holder.of(cur.fetchone())

        return self._db.transaction(renew, "renew lease")

    def release(self, key: str, token: int, *, table: str = "archives") -> None:
        """Give the lease up (the next claimer need not wait for it to expire)."""
        sql = leased_sql(table, "UPDATE {table} SET lease_until = NULL WHERE {key} = %s AND lease_token = %s")
        self._db.transaction(lambda cur: cur.execute(sql, (key, token)), "release lease")


def take_lease(cur: psycopg.Cursor[Any], archive: str, owner: Owner, lease_s: float) -> int:
    """A new lease on a row the transaction has locked: the next token, the holder's identity."""
    cur.execute(
        """
        UPDATE archives SET lease_token = lease_token + 1,
               lease_until = now() + make_interval(secs => %s), heartbeat_at = now(),
               slurm_job_id = %s, host = %s, pid = %s
        WHERE archive = %s RETURNING lease_token
        """,
        (lease_s, owner.slurm_job_id, owner.host, owner.pid, archive),
    )
    return int(one(cur)["lease_token"])

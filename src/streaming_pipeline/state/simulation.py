"""The SQL that only the measurements use: the scale simulation (tools/scale.py) and the web
view's (tools/web_scale.py).

Real workers are handed their archive by an executor; the simulation's hundreds of workers take
the next free one from a shared queue (`SimulatedQueue`, through the real lease code). Its audit
(`ScaleAudit`) runs on a direct connection to the simulation's own throwaway server: a trigger
logs every member's move to `done`, so that a member done twice (the property the fencing
guarantees) is counted rather than assumed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from .db import Table
from .lease_table import take_lease
from .records import ArchiveKey, Owner

_AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS sim_done_log (
    archive text NOT NULL, member text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION sim_log_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'done' AND (TG_OP = 'INSERT' OR OLD.status <> 'done') THEN
        INSERT INTO sim_done_log (archive, member) VALUES (NEW.archive, NEW.member);
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS sim_done ON audio_files;
CREATE TRIGGER sim_done AFTER INSERT OR UPDATE OF status ON audio_files
    FOR EACH ROW EXECUTE FUNCTION sim_log_done();
"""
_HOLDING = "SELECT pid FROM archives WHERE state = 'running' AND lease_until > now() AND pid = ANY(%s)"


class SimulatedQueue(Table):
    """The next archive of some days for a simulated worker."""

    def claim_next(
        self, days: Sequence[dt.date], *, owner: Owner, lease_s: float
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
            return key, take_lease(cur, key.archive, owner, lease_s)

        return self._db.transaction(claim, "claim next archive")

    def unfinished(self, days: Sequence[dt.date]) -> int:
        """Archives of `days` not done yet (held or not)."""
        rows = self._db.query(
            "SELECT count(*) AS n FROM archives WHERE day = ANY(%s) AND state <> 'done'", (list(days),)
        )
        return int(rows[0]["n"])


@dataclass(frozen=True)
class AuditTally:
    members_done: int
    done_transitions: int  # moves to `done` the trigger logged
    duplicates: int  # members moved to `done` more than once
    archives_done: int
    taken_over: int  # archives of killed workers that another worker took over


class ScaleAudit:
    """Observer queries on an autocommit connection of its own (opened before the workers, who
    may fill the server)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def reset(self) -> None:
        """Empty the tables a previous simulation filled and install the `done` trigger."""
        self._conn.execute("DROP TABLE IF EXISTS sim_done_log")
        self._conn.execute("TRUNCATE archive_runs, audio_files, archives CASCADE")
        self._conn.execute(_AUDIT_SQL)

    def client_backends(self) -> int:
        return self._one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")

    def done_transitions(self) -> int:
        return self._one("SELECT count(*) FROM sim_done_log")

    def holding(self, pids: Sequence[int]) -> set[int]:
        """Those of `pids` that hold a live lease on a started archive."""
        return {int(r[0]) for r in self._conn.execute(_HOLDING, (list(pids),))}

    def tally(self, killed: Sequence[int]) -> AuditTally:
        return AuditTally(
            members_done=self._one("SELECT count(*) FROM audio_files WHERE status = 'done'"),
            done_transitions=self.done_transitions(),
            duplicates=self._one(
                "SELECT count(*) FROM"
                " (SELECT 1 FROM sim_done_log GROUP BY archive, member HAVING count(*) > 1) d"
            ),
            archives_done=self._one("SELECT count(*) FROM archives WHERE state = 'done'"),
            taken_over=self._one(
                "SELECT count(DISTINCT archive) FROM archive_runs"
                " WHERE state = 'taken over' AND pid = ANY(%s)",
                list(killed),
            ),
        )

    def _one(self, sql: str, *params: Any) -> int:
        row = self._conn.execute(sql, params).fetchone()
        return int(row[0]) if row else 0


class MeasuredMembers(Table):
    """The members whose pages `search-scale --http` times (tools/web_scale.py)."""

    def ids(self, archive: str) -> list[int]:
        return [
            int(r["id"]) for r in self._db.query("SELECT id FROM audio_files WHERE archive = %s", (archive,))
        ]

    def sample(self, excluding: str, limit: int) -> list[tuple[int, str]]:
        """`limit` done members outside `excluding`, the same ones each run: (id, remote_path)."""
        rows = self._db.query(
            "SELECT id, remote_path FROM audio_files WHERE status = 'done' AND archive <> %s"
            " ORDER BY md5(id::text) LIMIT %s",
            (excluding, limit),
        )
        return [(int(r["id"]), r["remote_path"]) for r in rows]

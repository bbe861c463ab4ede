"""An archive's row and its runs' records: start, progress, stage timings, GPU samples, outcome."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from .db import Table, one
from .records import ArchiveKey, ArchiveSummary, Owner, StageTiming
from .states import ArchiveState


class ArchiveTable(Table):
    """`archives`, `archive_runs`, `batch_stages`, `gpu_samples`: what a worker records of its archive."""

    def start(self, key: ArchiveKey, *, path: str, bytes_total: int, owner: Owner) -> int:
        """The archive taken by this worker; returns the id of this run (archive_runs)."""
        sql = """
            INSERT INTO archives (archive, day, slot, path, state, bytes_total, bytes_read,
                                  host, pid, slurm_job_id, started_at, finished_at, error)
            VALUES (%s, %s, %s, %s, 'running', %s, 0, %s, %s, %s, now(), NULL, NULL)
            ON CONFLICT (archive) DO UPDATE SET
                path = EXCLUDED.path, state = 'running', bytes_total = EXCLUDED.bytes_total,
                bytes_read = 0, host = EXCLUDED.host, pid = EXCLUDED.pid,
                slurm_job_id = EXCLUDED.slurm_job_id, started_at = now(), finished_at = NULL,
                error = NULL, heartbeat_at = now(), updated_at = now(),
                restarts = archives.restarts + (archives.started_at IS NOT NULL)::int
        """
        holder = (owner.host, owner.pid, owner.slurm_job_id)
        params = (key.archive, key.day, key.slot, path, bytes_total, *holder)
        run_sql = """
            INSERT INTO archive_runs (archive, day, host, pid, slurm_job_id, restarts, lease_token)
            SELECT archive, day, host, pid, slurm_job_id, restarts, lease_token FROM archives
            WHERE archive = %s RETURNING id
        """

        def start(cur: psycopg.Cursor[Any]) -> int:
            # Earlier runs never closed (killed, or stalled and fenced out) end here.
            cur.execute(
                "UPDATE archive_runs SET state = 'taken over', finished_at = now()"
                " WHERE archive = %s AND finished_at IS NULL",
                (key.archive,),
            )
            cur.execute(sql, params)
            cur.execute(run_sql, (key.archive,))
            return int(one(cur)["id"])

        return self._db.transaction(start, "start archive", fenced=True)

    def record_stages(self, run_id: int, stages: Sequence[StageTiming]) -> None:
        """A batch's stage timings, one round trip (the day report's timeline)."""
        if not stages:
            return
        sql = """
            INSERT INTO batch_stages
                (run_id, batch, stage, started_at, ended_at, members, audio_s, bytes_read)
            VALUES (%s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s, %s)
            ON CONFLICT (run_id, batch, stage) DO UPDATE SET started_at = EXCLUDED.started_at,
                ended_at = EXCLUDED.ended_at, members = EXCLUDED.members, audio_s = EXCLUDED.audio_s,
                bytes_read = EXCLUDED.bytes_read
        """
        rows = [
            (run_id, s.batch, s.stage, s.started, s.ended, s.members, s.audio_s, s.bytes_read) for s in stages
        ]
        self._db.transaction(lambda cur: cur.executemany(sql, rows), "record stage timings", fenced=True)

    def record_gpu_samples(self, run_id: int, samples: Sequence[tuple[float, int, float, float]]) -> None:
        """(unix time, GPU index, busy share, memory MB) samples, one round trip."""
        if not samples:
            return
        sql = (
            "INSERT INTO gpu_samples (run_id, at, gpu, busy, memory_mb)"
            " VALUES (%s, to_timestamp(%s), %s, %s, %s)"
        )
        rows = [(run_id, *sample) for sample in samples]
        self._db.transaction(lambda cur: cur.executemany(sql, rows), "record GPU samples", fenced=True)

    def progress(self, archive: str, *, bytes_read: int, members_seen: int) -> None:
        sql = "UPDATE archives SET bytes_read = %s, members_seen = %s, updated_at = now() WHERE archive = %s"
        self._db.transaction(
            lambda cur: cur.execute(sql, (bytes_read, members_seen, archive)), "progress", fenced=True
        )

    def finish(
        self,
        archive: str,
        *,
        state: str,
        error: str | None,
        wall_s: float,
        run_id: int | None = None,
        audio_s: float | None = None,
    ) -> None:
        """The archive's outcome, and that of this run (`run_id`) when it has one. `wall_s` adds
        this run's seconds to the runs' before it, as its done members' audio adds up: an archive
        resumed (or run again with nothing left to do) keeps one x realtime over all its runs."""
        sql = (
            "UPDATE archives SET state = %s, error = %s, finished_at = now(),"
            " wall_s = coalesce(wall_s, 0) + %s, updated_at = now() WHERE archive = %s"
        )
        run_sql = (
            "UPDATE archive_runs SET state = %s, error = %s, finished_at = now(), audio_s = %s WHERE id = %s"
        )

        def finish(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(sql, (state, error, wall_s, archive))
            if run_id is not None:
                cur.execute(run_sql, (state, error, audio_s, run_id))
            # An orderly end, whatever its state: no member of this run crashed it.
            cur.execute(
                "UPDATE member_crashes SET in_flight = false WHERE archive = %s AND in_flight", (archive,)
            )

        self._db.transaction(finish, "finish archive", fenced=True)

    def mark_interrupted(self, archive: str, reason: str) -> None:
        """A running archive `interrupted` while its worker still holds the lease and finishes
        what is in flight (`finish` then records how the run ended)."""
        sql = (
            "UPDATE archives SET state = %s, error = %s, updated_at = now() WHERE archive = %s AND state = %s"
        )
        values = (ArchiveState.INTERRUPTED, reason, archive, ArchiveState.RUNNING)
        self._db.transaction(lambda cur: cur.execute(sql, values), "mark interrupted", fenced=True)

    def forget(self, archive: str) -> None:
        """Delete an archive's rows, so that its next run starts from nothing (the benchmark)."""

        def forget(cur: psycopg.Cursor[Any]) -> None:
            cur.execute("DELETE FROM audio_files WHERE archive = %s", (archive,))
            cur.execute("DELETE FROM archives WHERE archive = %s", (archive,))

        self._db.transaction(forget, "forget archive")

    def summary(self, archive: str) -> ArchiveSummary:
        def read(cur: psycopg.Cursor[Any]) -> ArchiveSummary:
            cur.execute(
                """
                SELECT count(*) FILTER (WHERE status = 'done') AS done,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       count(*) FILTER (WHERE status = 'rejected') AS rejected,
                       count(*) FILTER (WHERE status NOT IN ('done', 'failed', 'rejected')) AS pending,
                       coalesce(sum(duration_s) FILTER (WHERE status = 'done'), 0) AS audio_s
                FROM audio_files WHERE archive = %s
                """,
                (archive,),
            )
            row = one(cur)
            return ArchiveSummary(
                row["done"], row["failed"], row["rejected"], row["pending"], float(row["audio_s"])
            )

        return self._db.transaction(read, "summary")

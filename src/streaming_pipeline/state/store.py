"""Progress in PostgreSQL (psycopg 3): one row per member, one per archive.

Writes are batched (one statement per batch and stage, not per member) and every transaction is
retried on OperationalError: a restarted server or a killed backend costs a reconnect, not a run.
A member row never goes back from `done`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..config import describe_error, dsn_password
from ..errors import ConfigError, StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def migrations() -> dict[int, str]:
    """`migrations/NNNN_name.sql`, package data: version -> SQL, applied in order by init_schema."""
    found = {}
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found[int(path.name[:4])] = path.read_text(encoding="utf-8")
    return found


SCHEMA_VERSION = max(migrations())

MEMBER_COLUMNS = (
    "status",
    "size_bytes",
    "sample_rate",
    "channels",
    "duration_s",
    "transcript",
    "language",
    "language_probability",
    "remote_path",
    "error",
    "decoder",
    "full_name",
    "fallback",
)
DAY_COLUMNS = frozenset(
    {"state", "archives", "submitted", "executor", "array_job_id", "finalize_job_id", "submitted_at",
     "finalized_at", "summary"}
)  # fmt: skip


@dataclass(frozen=True)
class MemberRecord:
    member: str
    status: str
    size_bytes: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    transcript: str | None = None
    language: str | None = None
    language_probability: float | None = None
    remote_path: str | None = None
    error: str | None = None
    decoder: str | None = None
    full_name: str | None = None
    fallback: bool | None = None


@dataclass(frozen=True)
class StageTiming:
    """One stage of one stream batch, in unix seconds."""

    batch: int
    stage: str
    started: float
    ended: float
    members: int = 0
    audio_s: float = 0.0
    bytes_read: int | None = None


@dataclass(frozen=True)
class ShardCheckpoint:
    """A process-dataset shard whose upload rsync confirmed: source rows [first_row, end_row)."""

    shard: int
    first_row: int
    end_row: int
    rows: int
    bytes: int
    last_id: str | None
    remote_path: str
    source_state: dict[str, Any] | None
    failures: tuple[tuple[int, str | None, str], ...] = ()  # (row index, id, error)


@dataclass(frozen=True)
class DatasetResume:
    rows_done: int
    shards_done: int
    last_id: str | None
    source_state: dict[str, Any] | None
    state: str


@dataclass(frozen=True)
class ArchiveKey:
    archive: str
    day: dt.date
    slot: str


class ProgressStore:
    def __init__(
        self,
        dsn: str,
        *,
        attempts: int = 6,
        backoff_max: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        connect_timeout: int = 10,
    ) -> None:
        self._dsn = dsn
        self._secret = dsn_password(dsn)
        self._attempts = attempts
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        # Reader, transcriber and upload threads share one connection, one transaction at a time.
        self._lock = threading.RLock()

    # -- connection handling -------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = psycopg.connect(
                self._dsn,
                connect_timeout=self._connect_timeout,
                application_name="streaming-pipeline",
                row_factory=dict_row,
            )
        return self._conn

    def _transaction(
        self, work: Callable[[psycopg.Cursor[Any]], T], what: str, attempts: int | None = None
    ) -> T:
        """Run `work` in one transaction, reconnecting and retrying on OperationalError."""

        def once() -> T:
            conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    return work(cur)
            except psycopg.OperationalError:
                conn.close()  # drop it: the next attempt reconnects
                raise

        retrying = Retrying(
            stop=stop_after_attempt(attempts or self._attempts),
            wait=wait_exponential(multiplier=0.5, min=0.5, max=self._backoff_max),
            retry=retry_if_exception_type(psycopg.OperationalError),
            before_sleep=lambda state: self._log_retry(what, state),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            with self._lock:
                return retrying(once)
        except psycopg.Error as exc:
            raise StoreError(f"database error during {what}: {self._scrub(exc)}") from None

    def _log_retry(self, what: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "database %s attempt %d failed (%s); retrying in %.1fs",
            what,
            state.attempt_number,
            self._scrub(exc) if exc else "?",
            delay,
        )

    def _scrub(self, exc: BaseException) -> str:
        return describe_error(exc, (self._secret,))

    def check(self) -> None:
        """Fail fast with a one-line, password-free error when the database is unreachable."""
        self._transaction(lambda cur: cur.execute("SELECT 1"), "connect", attempts=1)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- schema --------------------------------------------------------------------------
    def schema_version(self) -> int:
        """The version in place (0: none), read-only, for commands that must not migrate."""

        def read(cur: psycopg.Cursor[Any]) -> int:
            cur.execute("SELECT to_regclass('schema_version') IS NOT NULL AS present")
            if not cur.fetchone()["present"]:
                return 0
            cur.execute("SELECT coalesce(max(version), 0) AS v FROM schema_version")
            return int(cur.fetchone()["v"])

        return self._transaction(read, "schema version")

    def init_schema(self) -> int:
        """Create or migrate the schema idempotently; returns the version now in place."""

        def migrate(cur: psycopg.Cursor[Any]) -> int:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (0x5354524D,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT coalesce(max(version), 0) AS v FROM schema_version")
            current = int(cur.fetchone()["v"])
            for version, sql in sorted(migrations().items()):
                if version > current:
                    cur.execute(sql)
                    cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                    current = version
            return current

        version = self._transaction(migrate, "schema migration")
        log.info("database schema at version %d", version)
        return version

    # -- archives ------------------------------------------------------------------------
    def start_archive(
        self, key: ArchiveKey, *, path: str, bytes_total: int, host: str, pid: int, slurm_job_id: str | None
    ) -> int:
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
        params = (key.archive, key.day, key.slot, path, bytes_total, host, pid, slurm_job_id)
        run_sql = """
            INSERT INTO archive_runs (archive, day, host, pid, slurm_job_id, restarts)
            SELECT archive, day, host, pid, slurm_job_id, restarts FROM archives WHERE archive = %s
            RETURNING id
        """

        def start(cur: psycopg.Cursor[Any]) -> int:
            cur.execute(sql, params)
            cur.execute(run_sql, (key.archive,))
            return int(cur.fetchone()["id"])

        return self._transaction(start, "start archive")

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query (the day report's)."""

        def read(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
            cur.execute(sql, params)
            return list(cur.fetchall())

        return self._transaction(read, "read")

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
        self._transaction(lambda cur: cur.executemany(sql, rows), "record stage timings")

    def record_gpu_samples(self, run_id: int, samples: Sequence[tuple[float, int, float, float]]) -> None:
        """(unix time, GPU index, busy share, memory MB) samples, one round trip."""
        if not samples:
            return
        sql = (
            "INSERT INTO gpu_samples (run_id, at, gpu, busy, memory_mb)"
            " VALUES (%s, to_timestamp(%s), %s, %s, %s)"
        )
        rows = [(run_id, *sample) for sample in samples]
        self._transaction(lambda cur: cur.executemany(sql, rows), "record GPU samples")

    def update_archive_progress(self, archive: str, *, bytes_read: int, members_seen: int) -> None:
        sql = "UPDATE archives SET bytes_read = %s, members_seen = %s, updated_at = now() WHERE archive = %s"
        self._transaction(lambda cur: cur.execute(sql, (bytes_read, members_seen, archive)), "progress")

    def finish_archive(
        self,
        archive: str,
        *,
        state: str,
        error: str | None,
        wall_s: float,
        run_id: int | None = None,
        audio_s: float | None = None,
    ) -> None:
        """The archive's outcome, and that of this run (`run_id`) when it has one."""
        sql = (
            "UPDATE archives SET state = %s, error = %s, finished_at = now(), wall_s = %s,"
            " updated_at = now() WHERE archive = %s"
        )
        run_sql = (
            "UPDATE archive_runs SET state = %s, error = %s, finished_at = now(), audio_s = %s WHERE id = %s"
        )

        def finish(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(sql, (state, error, wall_s, archive))
            if run_id is not None:
                cur.execute(run_sql, (state, error, audio_s, run_id))

        self._transaction(finish, "finish archive")

    # -- days ----------------------------------------------------------------------------
    def register_archives(self, day: dt.date, archives: Sequence[tuple[ArchiveKey, str, int]]) -> None:
        """Rows for a day's archives ((key, path, size)), so that status lists them before they start."""
        sql = """
            INSERT INTO archives (archive, day, slot, path, bytes_total) VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (archive) DO UPDATE SET path = EXCLUDED.path, bytes_total = EXCLUDED.bytes_total
            WHERE archives.state <> 'done'
        """
        rows = [(k.archive, k.day, k.slot, path, size) for k, path, size in archives]
        self._transaction(lambda cur: cur.executemany(sql, rows), "register archives")

    def archive_status(self, day: dt.date) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM archive_status WHERE day = %s ORDER BY slot, archive", (day,))

    def record_day(self, day: dt.date, **fields: Any) -> None:
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
        self._transaction(lambda cur: cur.execute(sql, (day, *values.values())), "record day")

    # -- members -------------------------------------------------------------------------
    def done_members(self, archive: str) -> set[str]:
        def read(cur: psycopg.Cursor[Any]) -> set[str]:
            cur.execute("SELECT member FROM audio_files WHERE archive = %s AND status = 'done'", (archive,))
            return {row["member"] for row in cur}

        return self._transaction(read, "resume lookup")

    def uploading_members(self, archive: str) -> list[tuple[str, str]]:
        """(member, remote_path) of members whose upload an earlier run started but never
        confirmed in the database."""
        rows = self.query(
            "SELECT member, remote_path FROM audio_files WHERE archive = %s AND status = 'uploading'"
            " AND remote_path IS NOT NULL",
            (archive,),
        )
        return [(r["member"], r["remote_path"]) for r in rows]

    def record_members(self, key: ArchiveKey, records: Sequence[MemberRecord]) -> None:
        """Upsert a batch of member rows in one round trip; `done` rows are never overwritten."""
        if not records:
            return
        cols = ", ".join(MEMBER_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in MEMBER_COLUMNS)
        placeholders = ", ".join(["%s"] * (4 + len(MEMBER_COLUMNS)))
        sql = f"""
            INSERT INTO audio_files (day, slot, archive, member, {cols})
            VALUES ({placeholders})
            ON CONFLICT (archive, member) DO UPDATE SET {updates}, updated_at = now()
            WHERE audio_files.status <> 'done'
        """
        rows = [
            (key.day, key.slot, key.archive, r.member, *(getattr(r, c) for c in MEMBER_COLUMNS))
            for r in records
        ]
        self._transaction(lambda cur: cur.executemany(sql, rows), "record members")

    def mark_done(self, archive: str, members: Iterable[tuple[str, str]]) -> None:
        """Members whose upload rsync confirmed: (member, remote_path) pairs, one statement."""
        pairs = list(members)
        if not pairs:
            return
        sql = """
            UPDATE audio_files AS f SET status = 'done', remote_path = d.remote_path,
                   error = NULL, updated_at = now()
            FROM unnest(%s::text[], %s::text[]) AS d(member, remote_path)
            WHERE f.archive = %s AND f.member = d.member
        """
        params = ([m for m, _ in pairs], [p for _, p in pairs], archive)
        self._transaction(lambda cur: cur.execute(sql, params), "mark done")

    def mark_failed(self, archive: str, members: Sequence[str], error: str) -> None:
        if not members:
            return
        sql = """
            UPDATE audio_files SET status = 'failed', error = %s, updated_at = now()
            WHERE archive = %s AND member = ANY(%s) AND status <> 'done'
        """
        self._transaction(lambda cur: cur.execute(sql, (error, archive, list(members))), "mark failed")

    def forget_archive(self, archive: str) -> None:
        """Delete an archive's rows, so that its next run starts from nothing (the benchmark)."""

        def forget(cur: psycopg.Cursor[Any]) -> None:
            cur.execute("DELETE FROM audio_files WHERE archive = %s", (archive,))
            cur.execute("DELETE FROM archives WHERE archive = %s", (archive,))

        self._transaction(forget, "forget archive")

    def archive_summary(self, archive: str) -> dict[str, Any]:
        def read(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
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
            return dict(cur.fetchone())

        return self._transaction(read, "summary")

    def iter_done_members(self, day: dt.date, chunk: int = 500) -> Iterator[list[dict[str, Any]]]:
        """A day's done members in (archive, member) order, `chunk` rows per round trip (keyset
        pagination: no long transaction, no server-side cursor to lose on a reconnect)."""
        sql = """
            SELECT archive, slot, member, duration_s, language, transcript, remote_path
            FROM audio_files WHERE day = %s AND status = 'done' AND (archive, member) > (%s, %s)
            ORDER BY archive, member LIMIT %s
        """
        after = ("", "")
        while True:
            rows = self.query(sql, (day, *after, chunk))
            if not rows:
                return
            yield rows
            after = (rows[-1]["archive"], rows[-1]["member"])

    # -- datasets (process-dataset) ------------------------------------------------------
    def start_dataset_run(
        self,
        run: str,
        *,
        source: str,
        config_name: str | None,
        split: str,
        output: str,
        host: str,
        pid: int,
        slurm_job_id: str | None,
        resume: bool,
    ) -> DatasetResume:
        """Claim the run's row and return where to continue (nothing done for a new run).

        A run that has uploaded shards continues only with `resume`: starting it over silently
        would write its first shards again next to what a reader may already use.
        """

        def start(cur: psycopg.Cursor[Any]) -> DatasetResume:
            cur.execute(
                """
                INSERT INTO dataset_runs (run, source, config_name, split, output)
                VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run) DO NOTHING
                """,
                (run, source, config_name, split, output),
            )
            cur.execute("SELECT * FROM dataset_runs WHERE run = %s FOR UPDATE", (run,))
            row = cur.fetchone()
            if row["shards_done"] > 0 and not resume:
                raise _RunExists(row["shards_done"], row["rows_done"], row["state"])
            cur.execute(
                "SELECT source_state FROM dataset_shards WHERE run = %s AND shard = %s",
                (run, row["shards_done"] - 1),
            )
            shard = cur.fetchone()
            cur.execute(
                """
                UPDATE dataset_runs SET state = 'running', host = %s, pid = %s, slurm_job_id = %s,
                       started_at = now(), finished_at = NULL, error = NULL, updated_at = now()
                WHERE run = %s
                """,
                (host, pid, slurm_job_id, run),
            )
            return DatasetResume(
                rows_done=row["rows_done"],
                shards_done=row["shards_done"],
                last_id=row["last_id"],
                source_state=shard["source_state"] if shard else None,
                state=row["state"],
            )

        try:
            return self._transaction(start, "start dataset run")
        except _RunExists as exists:
            raise ConfigError(
                f"{run} already has {exists.shards} uploaded shards ({exists.rows} source rows, "
                f"state {exists.state}): pass --resume to continue it, or --output-name to start a new one"
            ) from None

    def record_shard(self, run: str, shard: ShardCheckpoint) -> None:
        """Checkpoint an uploaded shard, its failed rows and the run's totals in one transaction.

        Shards are recorded in order: a shard whose predecessor is not recorded is refused, so the
        checkpoint never skips rows.
        """
        from psycopg.types.json import Jsonb

        def record(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(
                """
                UPDATE dataset_runs SET rows_done = %s, shards_done = %s + 1, last_id = %s,
                       rows_written = rows_written + %s, rows_failed = rows_failed + %s, updated_at = now()
                WHERE run = %s AND shards_done = %s
                """,
                (
                    shard.end_row,
                    shard.shard,
                    shard.last_id,
                    shard.rows,
                    len(shard.failures),
                    run,
                    shard.shard,
                ),
            )
            if cur.rowcount != 1:
                raise StoreError(f"shard {shard.shard} of {run} is out of order; not recorded")
            cur.execute(
                """
                INSERT INTO dataset_shards (run, shard, first_row, end_row, rows, failed, bytes, last_id,
                                            remote_path, source_state)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    run, shard.shard, shard.first_row, shard.end_row, shard.rows, len(shard.failures),
                    shard.bytes, shard.last_id, shard.remote_path,
                    None if shard.source_state is None else Jsonb(shard.source_state),
                ),
            )  # fmt: skip
            if shard.failures:
                cur.executemany(
                    "INSERT INTO dataset_failures (run, row_index, id, error) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (run, row_index) DO UPDATE SET id = EXCLUDED.id, error = EXCLUDED.error",
                    [(run, *failure) for failure in shard.failures],
                )

        self._transaction(record, "record shard")

    def dataset_shards(self, run: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM dataset_shards WHERE run = %s ORDER BY shard", (run,))

    def finish_dataset_run(self, run: str, *, state: str, error: str | None) -> dict[str, Any]:
        sql = """
            UPDATE dataset_runs SET state = %s, error = %s, finished_at = now(), updated_at = now()
            WHERE run = %s RETURNING *
        """

        def finish(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
            cur.execute(sql, (state, error, run))
            return dict(cur.fetchone())

        return self._transaction(finish, "finish dataset run")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Read-only helper for status commands and tests."""

        def read(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
            cur.execute(sql, params)  # type: ignore[arg-type]
            return list(cur.fetchall())

        return self._transaction(read, "query")


class _RunExists(Exception):
    def __init__(self, shards: int, rows: int, state: str) -> None:
        super().__init__()
        self.shards, self.rows, self.state = shards, rows, state

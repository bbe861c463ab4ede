"""Progress in PostgreSQL (psycopg 3): one row per member, one per archive.

Writes are batched (one statement per batch and stage, not per member) and every transaction is
retried on OperationalError: a restarted server or a killed backend costs a reconnect, not a run.
A member row never goes back from `done`.

One connection per store, shared by a worker's threads one transaction at a time, holding no
session state (no SET, no advisory locks, no server-side prepared statements), so that it works
through PgBouncer in transaction mode. A server that is full (53300), starting or not listening
is waited for with capped, jittered backoff for up to `patience` seconds; a wrong password,
database or host fails at once. A store that holds an archive's lease (lease.py) checks it in
every write transaction: once another worker has taken the archive over, nothing more is written.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row
from tenacity import RetryCallState, Retrying, retry_if_exception

from ..config import describe_error, dsn_password
from ..errors import ConfigError, LeaseLost, RunBusy, StoreError
from .states import MemberStatus

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
    "timestamps",
    "subtitles",
)
DAY_COLUMNS = frozenset(
    {"state", "archives", "submitted", "executor", "array_job_id", "finalize_job_id", "submitted_at",
     "finalized_at", "summary"}
)  # fmt: skip


@dataclass(frozen=True)
class MemberRecord:
    member: str
    status: MemberStatus
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
    timestamps: str | None = None  # none, segment or word
    subtitles: str | None = None  # the subtitle formats written beside the FLAC ("srt,vtt")

    def __post_init__(self) -> None:
        # A header may declare any size (2**66 in base-256); bigint holds what a disk can. The
        # declared size is in the rejection's reason.
        if self.size_bytes is not None and not -(2**63) <= self.size_bytes < 2**63:
            object.__setattr__(self, "size_bytes", None)


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
    lease_token: int = 0


@dataclass(frozen=True)
class ArchiveKey:
    archive: str
    day: dt.date
    slot: str


# A server that is full, starting, stopping or not (yet) listening: wait for a slot. Matched on
# SQLSTATE where the server sends one, else on libpq's and PgBouncer's message text (a refused
# or failed connection carries no SQLSTATE).
_WAIT_SQLSTATES = frozenset({"53300", "57P03", "08004"})
_WAIT_TEXT = (
    "too many clients",
    "remaining connection slots are reserved",
    "connection refused",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "no more connections allowed",  # PgBouncer's max_client_conn
    "pgbouncer cannot connect to server",
    "query_wait_timeout",
)
# A wrong DSN, password, role or database: no amount of waiting helps.
_FATAL_SQLSTATES = frozenset({"28000", "28P01", "3D000", "42501"})
_FATAL_TEXT = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "no pg_hba.conf entry",
    "could not translate host name",
    "invalid connection option",
    "invalid dsn",
    "invalid integer value",
)


def waiting_for_slot(exc: BaseException) -> bool:
    """A connection failure worth waiting out (the server is full or not up yet)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if getattr(exc, "sqlstate", None) in _WAIT_SQLSTATES:
        return True
    text = str(exc).lower()
    return any(t in text for t in _WAIT_TEXT) and not fatal_connection_error(exc)


def fatal_connection_error(exc: BaseException) -> bool:
    """A configuration error: retrying it only hides it."""
    if getattr(exc, "sqlstate", None) in _FATAL_SQLSTATES:
        return True
    text = str(exc).lower()
    return isinstance(exc, psycopg.OperationalError) and any(t in text for t in _FATAL_TEXT)


# Rows a worker can hold a lease on: table -> its key column (identifiers, never user input).
LEASED = {"archives": "archive", "dataset_runs": "run"}


@dataclass
class _Fence:
    table: str
    key: str
    token: int
    on_lost: Callable[[LeaseLost], None] | None
    lost: LeaseLost | None = None


class ProgressStore:
    """`attempts`: tries of a transaction that failed mid-way (a dropped connection); `patience`:
    seconds to wait for a connection slot (a full or restarting server) before giving up."""

    def __init__(
        self,
        dsn: str,
        *,
        attempts: int = 6,
        backoff_max: float = 10.0,
        patience: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        connect_timeout: int = 10,
    ) -> None:
        self._dsn = dsn
        self._secret = dsn_password(dsn)
        self._attempts = attempts
        self._backoff_max = backoff_max
        self._patience = patience
        self._sleep = sleep
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._fence: _Fence | None = None
        # Reader, transcriber, upload and heartbeat threads share one connection, one
        # transaction at a time.
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
                prepare_threshold=None,  # no server-side prepared statements: PgBouncer-safe
            )
        return self._conn

    def _transaction(
        self,
        work: Callable[[psycopg.Cursor[Any]], T],
        what: str,
        attempts: int | None = None,
        *,
        fenced: bool = False,
    ) -> T:
        """Run `work` in one transaction, reconnecting and retrying on OperationalError.

        `fenced`: a write of the archive this store holds the lease of; it is made only while
        the lease is still this worker's (checked under a row lock in the same transaction).
        """
        fence = self._fence if fenced else None
        if fence is not None and fence.lost is not None:
            raise fence.lost

        def once() -> T:
            conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if fence is not None:
                        self._check_fence(cur, fence)
                    return work(cur)
            except psycopg.OperationalError:
                conn.close()  # drop it: the next attempt reconnects
                raise

        limit = attempts or self._attempts
        started = self._clock()

        def give_up(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None and waiting_for_slot(exc):
                return self._clock() - started >= self._patience
            return state.attempt_number >= limit

        def jittered(state: RetryCallState) -> float:
            # Full jitter: hundreds of workers refused at once do not come back at once.
            ceiling = min(self._backoff_max, 0.5 * 2 ** (state.attempt_number - 1))
            left = self._patience - (self._clock() - started)
            return max(0.05, min(random.uniform(0.5 * ceiling, ceiling), max(left, 0.05)))

        retrying = Retrying(
            stop=give_up,
            wait=jittered,
            retry=retry_if_exception(
                lambda e: isinstance(e, psycopg.OperationalError) and not fatal_connection_error(e)
            ),
            before_sleep=lambda state: self._log_retry(what, state),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            with self._lock:
                return retrying(once)
        except LeaseLost as lost:
            self._lose(fence, lost)
            raise
        except psycopg.Error as exc:
            raise StoreError(f"database error during {what}: {self._scrub(exc)}") from None

    def _log_retry(self, what: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if exc is not None and waiting_for_slot(exc):
            log.warning(
                "database %s: waiting for the database (%s); try %d, next in %.1fs",
                what,
                self._scrub(exc),
                state.attempt_number,
                delay,
            )
            return
        log.warning(
            "database %s attempt %d failed (%s); retrying in %.1fs",
            what,
            state.attempt_number,
            self._scrub(exc) if exc else "?",
            delay,
        )

    # -- fencing (the archive lease, lease.py) ---------------------------------------------
    def hold(
        self,
        key: str,
        token: int,
        on_lost: Callable[[LeaseLost], None] | None = None,
        *,
        table: str = "archives",
    ) -> None:
        """From now on every write of this store is made only while the lease token of `key` (an
        archive, or a dataset run with table="dataset_runs") is still `token`."""
        self._fence = _Fence(table, key, token, on_lost)

    def unhold(self) -> None:
        self._fence = None

    @property
    def lease_lost(self) -> LeaseLost | None:
        return self._fence.lost if self._fence else None

    def _check_fence(self, cur: psycopg.Cursor[Any], fence: _Fence) -> None:
        # FOR SHARE: a claimer's UPDATE of the row waits for this transaction, so a takeover
        # cannot land between the check and the write.
        query = "SELECT lease_token, slurm_job_id, host, pid FROM {table} WHERE {key} = %s FOR SHARE"
        cur.execute(_leased_sql(fence.table, query), (fence.key,))
        row = cur.fetchone()
        if row is None or row["lease_token"] != fence.token:
            holder = "nobody" if row is None else describe_holder(row)
            raise LeaseLost(fence.key, holder)

    def _lose(self, fence: _Fence | None, lost: LeaseLost) -> None:
        if fence is None or fence.lost is not None:
            return
        fence.lost = lost
        log.error("%s", lost)
        if fence.on_lost is not None:
            fence.on_lost(lost)

    def lease_is_lost(self, lost: LeaseLost) -> None:
        """The heartbeat found the lease taken: fail every later write at once."""
        self._lose(self._fence, lost)

    def confirm_hold(self) -> None:
        """Raise LeaseLost unless the lease held (`hold`) is still ours. For a write outside the
        database (an rsync), which no transaction's fence covers; without a hold, nothing to check."""
        if self._fence is not None:
            self._transaction(lambda cur: None, "confirm lease", fenced=True)

    def _scrub(self, exc: BaseException) -> str:
        return describe_error(exc, (self._secret,))

    def check(self) -> None:
        """Fail fast with a one-line, password-free error when the database is unreachable or
        misconfigured; a full or starting server is waited for (`patience`)."""
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
            return int(cur.fetchone()["id"])

        return self._transaction(start, "start archive", fenced=True)

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
        self._transaction(lambda cur: cur.executemany(sql, rows), "record stage timings", fenced=True)

    def record_gpu_samples(self, run_id: int, samples: Sequence[tuple[float, int, float, float]]) -> None:
        """(unix time, GPU index, busy share, memory MB) samples, one round trip."""
        if not samples:
            return
        sql = (
            "INSERT INTO gpu_samples (run_id, at, gpu, busy, memory_mb)"
            " VALUES (%s, to_timestamp(%s), %s, %s, %s)"
        )
        rows = [(run_id, *sample) for sample in samples]
        self._transaction(lambda cur: cur.executemany(sql, rows), "record GPU samples", fenced=True)

    def update_archive_progress(self, archive: str, *, bytes_read: int, members_seen: int) -> None:
        sql = "UPDATE archives SET bytes_read = %s, members_seen = %s, updated_at = now() WHERE archive = %s"
        self._transaction(
            lambda cur: cur.execute(sql, (bytes_read, members_seen, archive)), "progress", fenced=True
        )

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
            # An orderly end, whatever its state: no member of this run crashed it.
            cur.execute(
                "UPDATE member_crashes SET in_flight = false WHERE archive = %s AND in_flight", (archive,)
            )

        self._transaction(finish, "finish archive", fenced=True)

    # -- leases (lease.py) -----------------------------------------------------------------
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

        return self._transaction(claim, "claim archive")

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

        return self._transaction(claim, "claim next archive")

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
        update = _leased_sql(
            table,
            "UPDATE {table} SET lease_until = now() + make_interval(secs => %s)" + beat
            + " WHERE {key} = %s AND lease_token = %s",
        )  # fmt: skip
        holder = _leased_sql(table, "SELECT slurm_job_id, host, pid FROM {table} WHERE {key} = %s")

        def renew(cur: psycopg.Cursor[Any]) -> dict[str, Any] | None:
            cur.execute(update, (lease_s, key, token))
            if cur.rowcount == 1:
                return None
            cur.execute(holder, (key,))
            return cur.fetchone() or {"slurm_job_id": None, "host": None, "pid": None}

        return self._transaction(renew, "renew lease")

    def release(self, key: str, token: int, *, table: str = "archives") -> None:
        """Give the lease up (the next claimer need not wait for it to expire)."""
        sql = _leased_sql(
            table, "UPDATE {table} SET lease_until = NULL WHERE {key} = %s AND lease_token = %s"
        )
        self._transaction(lambda cur: cur.execute(sql, (key, token)), "release lease")

    def unfinished(self, days: Sequence[dt.date]) -> int:
        """Archives of `days` not done yet (held or not)."""
        rows = self.query(
            "SELECT count(*) AS n FROM archives WHERE day = ANY(%s) AND state <> 'done'", (list(days),)
        )
        return int(rows[0]["n"])

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

    def uploading_members(self, archive: str) -> list[tuple[str, str, tuple[str, ...]]]:
        """(member, remote_path, subtitle formats) of members whose upload an earlier run started
        but never confirmed in the database."""
        rows = self.query(
            "SELECT member, remote_path, subtitles FROM audio_files"
            " WHERE archive = %s AND status = 'uploading' AND remote_path IS NOT NULL",
            (archive,),
        )
        return [
            (r["member"], r["remote_path"], tuple(filter(None, (r["subtitles"] or "").split(","))))
            for r in rows
        ]

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
        self._transaction(lambda cur: cur.executemany(sql, rows), "record members", fenced=True)

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

        return self._transaction(mark, "mark done", fenced=True)

    def mark_in_flight(self, archive: str, members: Sequence[str]) -> None:
        """`members` go to the decoder: were the process to die now, they were in flight."""
        sql = """
            INSERT INTO member_crashes (archive, member, in_flight)
            SELECT %s, m, true FROM unnest(%s::text[]) AS m
            ON CONFLICT (archive, member) DO UPDATE SET in_flight = true
        """
        if members:
            self._transaction(
                lambda cur: cur.execute(sql, (archive, list(members))), "mark in flight", fenced=True
            )

    def clear_in_flight(self, archive: str, members: Sequence[str]) -> None:
        """`members` came back from the decoder (transcribed or failed)."""
        sql = (
            "UPDATE member_crashes SET in_flight = false"
            " WHERE archive = %s AND member = ANY(%s) AND in_flight"
        )
        if members:
            self._transaction(
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

        return self._transaction(counted, "count crashes", fenced=True)

    def mark_failed(self, archive: str, members: Sequence[str], error: str) -> None:
        if not members:
            return
        sql = """
            UPDATE audio_files SET status = 'failed', error = %s, updated_at = now()
            WHERE archive = %s AND member = ANY(%s) AND status <> 'done'
        """
        self._transaction(
            lambda cur: cur.execute(sql, (error, archive, list(members))), "mark failed", fenced=True
        )

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
        lease_s: float = 120.0,
        may_take: Callable[[dict[str, Any]], bool] = lambda row: False,
    ) -> DatasetResume:
        """Claim the run's row (its lease: one process per run) and return where to continue
        (nothing done for a new run). RunBusy while another live process holds it.

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
            cur.execute(
                "SELECT *, lease_until > now() AS leased FROM dataset_runs WHERE run = %s FOR UPDATE", (run,)
            )
            row = cur.fetchone()
            if row["leased"] and not may_take(row):
                raise RunBusy(
                    f"{run} is being processed by {describe_holder(row)}; not starting a second one"
                )
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
                       started_at = now(), finished_at = NULL, error = NULL, updated_at = now(),
                       lease_token = lease_token + 1, lease_until = now() + make_interval(secs => %s)
                WHERE run = %s RETURNING lease_token
                """,
                (host, pid, slurm_job_id, lease_s, run),
            )
            token = int(cur.fetchone()["lease_token"])
            return DatasetResume(
                rows_done=row["rows_done"],
                shards_done=row["shards_done"],
                last_id=row["last_id"],
                source_state=shard["source_state"] if shard else None,
                state=row["state"],
                lease_token=token,
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

        self._transaction(record, "record shard", fenced=True)

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

        return self._transaction(finish, "finish dataset run", fenced=True)

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query (the report's, status commands', tests')."""

        def read(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
            cur.execute(sql, params)  # type: ignore[arg-type]
            return list(cur.fetchall())

        return self._transaction(read, "query")


def _leased_sql(table: str, template: str) -> pgsql.Composed:
    """`template` with {table} and {key} filled in for a leased table (LEASED, never input)."""
    return pgsql.SQL(template).format(table=pgsql.Identifier(table), key=pgsql.Identifier(LEASED[table]))


def describe_holder(row: dict[str, Any]) -> str:
    job = f"job {row['slurm_job_id']}" if row.get("slurm_job_id") else "a job outside Slurm"
    return f"{job} on {row.get('host') or '?'} (pid {row.get('pid') or '?'})"


class _RunExists(Exception):
    def __init__(self, shards: int, rows: int, state: str) -> None:
        super().__init__()
        self.shards, self.rows, self.state = shards, rows, state

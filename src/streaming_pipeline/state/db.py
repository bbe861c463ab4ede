"""The connection to PostgreSQL that every table of state/ works through (psycopg 3).

One connection per process, shared by a worker's threads one transaction at a time, holding no
session state (no SET, no advisory locks, no server-side prepared statements), so that it works
through PgBouncer in transaction mode. Every transaction is retried on OperationalError: a
restarted server or a killed backend costs a reconnect, not a run. A server that is full (53300),
starting or not listening is waited for with capped, jittered backoff for up to `patience`
seconds; a wrong password, database or host fails at once. A connection that holds a lease
(lease.py) checks it in every write transaction marked `fenced`: once another process has taken
the row over, nothing more is written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from ..errors import LeaseLost, RefusedValues, StoreError
from ..redaction import describe_error, dsn_password
from .records import Holder

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def migrations() -> dict[int, str]:
    """`migrations/NNNN_name.sql`, package data: version -> SQL, applied in order by init_schema."""
    found = {}
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found[int(path.name[:4])] = path.read_text(encoding="utf-8")
    return found


SCHEMA_VERSION = max(migrations())

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


def refused_values(exc: BaseException) -> bool:
    """The server refused the values of a statement (data exception, program limit exceeded),
    not the statement or the connection."""
    return isinstance(exc, psycopg.DataError | psycopg.errors.ProgramLimitExceeded)


# Rows a worker can hold a lease on: table -> its key column (identifiers, never user input).
LEASED = {"archives": "archive", "dataset_runs": "run"}


@dataclass
class _Fence:
    table: str
    key: str
    token: int
    on_lost: Callable[[LeaseLost], None] | None
    lost: LeaseLost | None = None


# A process stopped inside a transaction (SIGSTOP, a hung mount, a debugger) keeps its row locks:
# a worker taking its archive over would wait on them for ever. Every transaction lets the
# server end it once it has sat idle this long (ms); the stopped process finds its connection
# gone when it resumes, and its fenced writes are refused by the lease. Set per transaction, so
# PgBouncer can pool it.
IDLE_IN_TRANSACTION_MS = 10_000
_EVERY = f"SET LOCAL idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}"


def _read_only(timeout_ms: int) -> str:
    """What each transaction of a read-only store starts with."""
    return f"SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = {int(timeout_ms)}; {_EVERY}"


class Database:
    """`attempts`: tries of a transaction that failed mid-way (a dropped connection); `patience`:
    seconds to wait for a connection slot (a full or restarting server) before giving up.
    `read_only_ms`: every transaction READ ONLY, a statement ended after that many ms (the web
    view's; set per transaction, so PgBouncer can pool it)."""

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
        read_only_ms: int | None = None,
    ) -> None:
        self._dsn = dsn
        self._begin = _EVERY if read_only_ms is None else _read_only(read_only_ms)
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
        # CPU seconds this process spent in transactions (the calling threads' own): what
        # recording progress costs a worker, next to its other stages.
        self.client_cpu_s = 0.0

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

    def transaction(
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
            cpu = time.thread_time()
            conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if self._begin:
                        cur.execute(self._begin)
                    if fence is not None:
                        self._check_fence(cur, fence)
                    return work(cur)
            except psycopg.OperationalError:
                conn.close()  # drop it: the next attempt reconnects
                raise
            finally:
                self.client_cpu_s += time.thread_time() - cpu  # under self._lock

        try:
            with self._lock:
                return self._retrying(what, attempts or self._attempts)(once)
        except LeaseLost as lost:
            self._lose(fence, lost)
            raise
        except psycopg.Error as exc:
            error = RefusedValues if refused_values(exc) else StoreError
            raise error(f"database error during {what}: {self._scrub(exc)}") from None

    def _retrying(self, what: str, limit: int) -> Retrying:
        """Transient errors retried with capped, jittered backoff: `limit` attempts, or for as
        long as the patience lasts while the database has no connection slot free."""
        started = self._clock()

        def give_up(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None and waiting_for_slot(exc):
                return self._clock() - started >= self._patience
            return state.attempt_number >= limit

        # Full jitter: hundreds of workers refused at once do not come back at once.
        backoff = wait_random_exponential(multiplier=0.5, max=self._backoff_max, min=0.05)

        def jittered(state: RetryCallState) -> float:
            left = self._patience - (self._clock() - started)
            return max(0.05, min(backoff(state), max(left, 0.05)))

        return Retrying(
            stop=give_up,
            wait=jittered,
            retry=retry_if_exception(
                lambda e: (
                    isinstance(e, psycopg.OperationalError)
                    and not fatal_connection_error(e)
                    and not refused_values(e)
                )
            ),
            before_sleep=lambda state: self._log_retry(what, state),
            sleep=self._sleep,
            reraise=True,
        )

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
        cur.execute(leased_sql(fence.table, query), (fence.key,))
        row = cur.fetchone()
        if row is None or row["lease_token"] != fence.token:
            holder = "nobody" if row is None else Holder.of(row).describe()
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
            self.transaction(lambda cur: None, "confirm lease", fenced=True)

    def _scrub(self, exc: BaseException) -> str:
        return describe_error(exc, (self._secret,))

    def check(self) -> None:
        """Fail fast with a one-line, password-free error when the database is unreachable or
        misconfigured; a full or starting server is waited for (`patience`)."""
        self.transaction(lambda cur: cur.execute("SELECT 1"), "connect", attempts=1)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- schema --------------------------------------------------------------------------
    def schema_version(self) -> int:
        """The version in place (0: none), read-only, for commands that must not migrate."""
        return self.transaction(_version_in_place, "schema version")

    def init_schema(self) -> int:
        """Create or migrate the schema idempotently; returns the version now in place.

        A schema already at the latest version is only read: workers call this on start, and a
        site may give their role no DDL rights once `init-db` has run as the owner (even `CREATE
        TABLE IF NOT EXISTS` needs CREATE on the schema)."""
        version = self.transaction(_migrate, "schema migration")
        log.info("database schema at version %d", version)
        return version

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query (the report's, status commands', tests')."""

        def read(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
            cur.execute(sql, params)
            return list(cur.fetchall())

        return self.transaction(read, "query")


def _version_in_place(cur: psycopg.Cursor[Any]) -> int:
    cur.execute("SELECT to_regclass('schema_version') IS NOT NULL AS present")
    if not one(cur)["present"]:
        return 0
    cur.execute("SELECT coalesce(max(version), 0) AS v FROM schema_version")
    return int(one(cur)["v"])


def _migrate(cur: psycopg.Cursor[Any]) -> int:
    """Bring the schema to SCHEMA_VERSION, one migration at a time, under an advisory lock (two
    workers starting together run each migration once)."""
    found = _version_in_place(cur)
    if found >= SCHEMA_VERSION:
        return found
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (0x5354524D,))
    cur.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    current = _version_in_place(cur)
    for version, sql in sorted(migrations().items()):
        if version > current:
            cur.execute(sql)
            cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            current = version
    return current


def write_isolating(
    records: Sequence[R], write: Callable[[Sequence[R]], T]
) -> tuple[list[T], list[tuple[R, RefusedValues]]]:
    """`write(records)` as one transaction; when the database refuses the values (one member's
    transcript it cannot hold), each record is written alone instead, so that one record's values
    never cost the others their write. Returns what the writes returned, and the records refused
    with the reason. Any other error (the database down, the lease lost) is raised as it is."""
    try:
        return [write(records)], []
    except RefusedValues as exc:
        if len(records) == 1:
            return [], [(records[0], exc)]
        log.warning("%s; writing the %d rows one at a time", exc, len(records))
    results: list[T] = []
    refused: list[tuple[R, RefusedValues]] = []
    for record in records:
        try:
            results.append(write([record]))
        except RefusedValues as exc:
            refused.append((record, exc))
    return results, refused


class Table:
    """One concern's statements (a table or a few that belong together) over the shared
    `Database`: its connection, lock, retries and fence are the same for every concern."""

    def __init__(self, db: Database) -> None:
        self._db = db


def one(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
    """The row of a statement that always returns one (an aggregate, RETURNING, a locked row)."""
    row = cur.fetchone()
    if row is None:
        raise StoreError("the database returned no row where one is always expected")
    return dict(row)


def leased_sql(table: str, template: str) -> pgsql.Composed:
    """`template` with {table} and {key} filled in for a leased table (LEASED, never input)."""
    return pgsql.SQL(template).format(table=pgsql.Identifier(table), key=pgsql.Identifier(LEASED[table]))

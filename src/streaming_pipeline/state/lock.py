"""One worker per archive: a PostgreSQL advisory lock held for the whole run.

The lock lives in a session of its own, so it is released the moment its holder's connection
ends: a worker that exits, crashes or is killed never blocks the archive (a node that vanishes
is noticed by the server's TCP keepalives, set short below). The claimer first updates the
archive's row, so concurrent claimers queue on the row lock and the loser reads the winner's
committed identity (job id, host, pid) to name it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..config import describe_error, dsn_password
from ..errors import PipelineError, StoreError
from .store import ArchiveKey

log = logging.getLogger(__name__)

# A dead peer is detected by the server after about idle + interval * count seconds.
_KEEPALIVE = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "6"}


@dataclass(frozen=True)
class Holder:
    slurm_job_id: str | None
    host: str | None
    pid: int | None
    since: dt.datetime | None

    def describe(self) -> str:
        job = f"job {self.slurm_job_id}" if self.slurm_job_id else "a job outside Slurm"
        since = f" since {self.since:%Y-%m-%d %H:%M:%S %Z}" if self.since else ""
        return f"{job} on {self.host or '?'} (pid {self.pid or '?'}){since}"


class ArchiveBusy(Exception):
    def __init__(self, archive: str, holder: Holder) -> None:
        super().__init__(f"{archive} is being processed by {holder.describe()}")
        self.archive = archive
        self.holder = holder


class ArchiveLock:
    """Context manager: `with ArchiveLock(...):` holds the archive or raises ArchiveBusy."""

    def __init__(
        self,
        dsn: str,
        key: ArchiveKey,
        *,
        path: str,
        host: str,
        pid: int,
        slurm_job_id: str | None,
        heartbeat_s: float = 30.0,
        on_lost: Callable[[str], None] | None = None,
        same_job_wait_s: float = 60.0,
        reclaim_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._dsn = dsn
        self._secret = dsn_password(dsn)
        self.key = key
        self._path = path
        self._host = host
        self._pid = pid
        self._job = slurm_job_id
        self._heartbeat_s = heartbeat_s
        self._on_lost = on_lost
        self._same_job_wait_s = same_job_wait_s
        self._reclaim_s = reclaim_s
        self._sleep = sleep
        self._conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ArchiveLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self._conn = self._open()
            deadline = time.monotonic() + self._same_job_wait_s
            while True:
                holder = self._try_claim()
                if holder is None:
                    break
                # A requeued job may start before its previous run's session has closed.
                if not (self._job and holder.slurm_job_id == self._job and time.monotonic() < deadline):
                    self._conn.close()
                    raise ArchiveBusy(self.key.archive, holder)
                log.info("%s still held by this job's previous run; waiting", self.key.archive)
                self._sleep(2.0)
        except psycopg.Error as exc:
            if self._conn is not None:
                self._conn.close()
            raise StoreError(f"could not lock {self.key.archive}: {self._scrub(exc)}") from None
        me = Holder(self._job, self._host, self._pid, None)
        log.info("holding %s (%s)", self.key.archive, me.describe())
        self._thread = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        self._thread.start()

    def _open(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=10,
            application_name=f"streaming-pipeline lock {self._job or self._pid}"[:63],
            row_factory=dict_row,
            options=" ".join(f"-c {k}={v}" for k, v in _KEEPALIVE.items()),
        )

    def _try_claim(self) -> Holder | None:
        """Claim the archive, or return who holds it."""
        assert self._conn is not None
        k = self.key
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute(
                """
                INSERT INTO archives (archive, day, slot, path) VALUES (%s, %s, %s, %s)
                ON CONFLICT (archive) DO UPDATE SET path = archives.path
                """,
                (k.archive, k.day, k.slot, self._path),
            )  # takes the row lock: claimers of one archive go one at a time
            cur.execute("SELECT pg_try_advisory_lock(archive_lock_key(%s)) AS got", (k.archive,))
            if not cur.fetchone()["got"]:
                raise psycopg.Rollback()  # ends the block; the holder's committed row is read below
            cur.execute(
                "UPDATE archives SET host = %s, pid = %s, slurm_job_id = %s, heartbeat_at = now()"
                " WHERE archive = %s",
                (self._host, self._pid, self._job, k.archive),
            )
            return None
        row = self._conn.execute(
            "SELECT slurm_job_id, host, pid, started_at FROM archives WHERE archive = %s", (k.archive,)
        ).fetchone()
        return Holder(row["slurm_job_id"], row["host"], row["pid"], row["started_at"])

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                assert self._conn is not None
                self._conn.execute(
                    "UPDATE archives SET heartbeat_at = now() WHERE archive = %s", (self.key.archive,)
                )
            except psycopg.Error as exc:
                # The session, and with it the lock, is gone (a restarted server, a killed
                # backend). Take it again if nobody else did; otherwise stop the worker.
                log.warning("lock session on %s lost: %s; reclaiming", self.key.archive, self._scrub(exc))
                reason = self._reclaim()
                if reason is not None:
                    log.error("%s", reason)
                    if self._on_lost is not None:
                        self._on_lost(reason)
                    return

    def _reclaim(self) -> str | None:
        """None once the lock is held again, else why not (after ~1 minute of trying)."""
        delay = 1.0
        deadline = time.monotonic() + self._reclaim_s
        while not self._stop.is_set():
            try:
                if self._conn is not None:
                    self._conn.close()
                self._conn = self._open()
                holder = self._try_claim()
                if holder is None:
                    log.warning("lock on %s reclaimed", self.key.archive)
                    return None
                return f"lost the lock on {self.key.archive} to {holder.describe()}"
            except psycopg.Error as exc:
                if time.monotonic() + delay > deadline:
                    return f"lost the lock on {self.key.archive}: {self._scrub(exc)}"
                self._sleep(delay)
                delay = min(delay * 2, 10.0)
        return None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()  # ends the session, which releases the advisory lock
            self._conn = None

    def _scrub(self, exc: BaseException) -> str:
        return describe_error(exc, (self._secret,))


class RunLock:
    """`with RunLock(dsn, name):` one process at a time for a named run (process-dataset), held by
    an advisory lock in a session of its own, so a killed holder releases it at once."""

    def __init__(self, dsn: str, name: str) -> None:
        self._dsn = dsn
        self._secret = dsn_password(dsn)
        self.name = name
        self._conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> RunLock:
        try:
            self._conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=10,
                application_name="streaming-pipeline run lock",
                options=" ".join(f"-c {k}={v}" for k, v in _KEEPALIVE.items()),
            )
            key = f"streaming-pipeline-run:{self.name}"
            sql = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
            row = self._conn.execute(sql, (key,)).fetchone()
        except psycopg.Error as exc:
            self.__exit__()
            raise StoreError(f"could not lock {self.name}: {describe_error(exc, (self._secret,))}") from None
        if not (row and row[0]):
            self.__exit__()
            raise RunBusy(f"{self.name} is being processed by another process; not starting a second one")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class RunBusy(PipelineError):
    """Another live process holds the run."""

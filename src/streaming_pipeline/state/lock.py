"""One process at a time for a named process-dataset run: a session advisory lock.

Archives use leases instead (lease.py), which need no session and so work through PgBouncer in
transaction mode; a dataset run is one long process per output, not hundreds of workers.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from ..config import describe_error, dsn_password
from ..errors import PipelineError, StoreError

log = logging.getLogger(__name__)

# A dead peer is detected by the server after about idle + interval * count seconds.
_KEEPALIVE = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "6"}


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

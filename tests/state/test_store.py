from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from streaming_pipeline.config import redact_dsn
from streaming_pipeline.errors import StoreError
from streaming_pipeline.state.store import SCHEMA_VERSION, ArchiveKey, MemberRecord, ProgressStore

KEY = ArchiveKey("2025-01-25/12_30.tar.xz", dt.date(2025, 1, 25), "12_30")


def _store(dsn: str) -> ProgressStore:
    store = ProgressStore(dsn)
    store.init_schema()
    store.start_archive(KEY, path="/x.tar.xz", bytes_total=10, host="h", pid=1, slurm_job_id=None)
    return store


def test_schema_is_idempotent_and_users_query_works(pg_dsn: str) -> None:
    store = ProgressStore(pg_dsn)
    assert store.init_schema() == SCHEMA_VERSION
    assert store.init_schema() == SCHEMA_VERSION
    rows = store.query("SELECT COUNT(*) FROM audio_files WHERE created_at > NOW() - INTERVAL '1 hour'")
    assert rows == [{"count": 0}]


def test_done_is_never_downgraded(pg_dsn: str) -> None:
    store = _store(pg_dsn)
    store.record_members(KEY, [MemberRecord("a.wav", "uploading"), MemberRecord("b.wav", "uploading")])
    store.mark_done(KEY.archive, [("a.wav", "/r/a.flac")])
    store.record_members(
        KEY, [MemberRecord("a.wav", "failed", error="x"), MemberRecord("b.wav", "failed", error="y")]
    )
    store.mark_failed(KEY.archive, ["a.wav"], "late failure")
    assert store.done_members(KEY.archive) == {"a.wav"}
    summary = store.archive_summary(KEY.archive)
    assert (summary["done"], summary["failed"], summary["pending"]) == (1, 1, 0)


def test_reconnects_after_backend_is_terminated(pg_dsn: str) -> None:
    store = _store(pg_dsn)
    store.check()
    pid = store.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    store.record_members(KEY, [MemberRecord("c.wav", "failed", error="x")])  # retried on a new connection
    assert store.archive_summary(KEY.archive)["failed"] == 1


def test_connection_failure_never_shows_the_password(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on port 1: libpq really tries, fails, and the store retries (and logs) once.
    dsn = "host=127.0.0.1 port=1 user=alice password=Sup3rS3cret dbname=x"
    store = ProgressStore(dsn, attempts=2, sleep=lambda s: None, connect_timeout=2)
    with pytest.raises(StoreError, match="Connection refused") as info:
        store.query("SELECT 1")  # check() tries once: a wrong DSN fails at once
    assert "Sup3rS3cret" not in str(info.value)
    assert any("retrying" in r.message for r in caplog.records)
    assert "Sup3rS3cret" not in caplog.text


def test_redact_dsn_forms() -> None:
    assert redact_dsn("postgresql://u:Sup3rS3cret@h/db") == "postgresql://u:***@h/db"
    assert redact_dsn("host=h password='Sup3r S3cret' user=u") == "host=h password=*** user=u"
    assert redact_dsn("host=h PASSWORD=Sup3rS3cret") == "host=h PASSWORD=***"

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.errors import StoreError
from streaming_pipeline.redaction import redact_dsn
from streaming_pipeline.state.embedded_pg import EmbeddedPostgres
from streaming_pipeline.state.records import DatasetRun
from streaming_pipeline.state.store import SCHEMA_VERSION, ArchiveKey, MemberRecord, Owner, ProgressStore

KEY = ArchiveKey("2025-01-25/12_30.tar.xz", dt.date(2025, 1, 25), "12_30")


def _store(dsn: str) -> ProgressStore:
    store = ProgressStore(dsn)
    store.init_schema()
    store.archives.start(KEY, path="/x.tar.xz", bytes_total=10, owner=Owner(None, "h", 1))
    return store


def test_schema_is_idempotent_and_users_query_works(pg_dsn: str) -> None:
    store = ProgressStore(pg_dsn)
    assert store.init_schema() == SCHEMA_VERSION
    assert store.init_schema() == SCHEMA_VERSION
    rows = store.query("SELECT COUNT(*) FROM audio_files WHERE created_at > NOW() - INTERVAL '1 hour'")
    assert rows == [{"count": 0}]


def test_done_is_never_downgraded(pg_dsn: str) -> None:
    store = _store(pg_dsn)
    store.members.record(KEY, [MemberRecord("a.wav", "uploading"), MemberRecord("b.wav", "uploading")])
    store.members.mark_done(KEY.archive, [("a.wav", "/r/a.flac")])
    store.members.record(
        KEY, [MemberRecord("a.wav", "failed", error="x"), MemberRecord("b.wav", "failed", error="y")]
    )
    store.members.mark_failed(KEY.archive, ["a.wav"], "late failure")
    assert store.members.done(KEY.archive) == {"a.wav"}
    summary = store.archives.summary(KEY.archive)
    assert (summary.done, summary.failed, summary.pending) == (1, 1, 0)


def test_reconnects_after_backend_is_terminated(pg_dsn: str) -> None:
    store = _store(pg_dsn)
    store.check()
    pid = store.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    store.members.record(KEY, [MemberRecord("c.wav", "failed", error="x")])  # retried on a new connection
    assert store.archives.summary(KEY.archive).failed == 1


class FakeClock:
    """A clock the injected sleep advances: the store's patience is exercised without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_refused_connection_is_waited_for_then_fails_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on port 1: libpq really tries and is refused each time (a server not up
    # yet looks the same), so the store waits, with capped jittered backoff, for its patience.
    dsn = "host=127.0.0.1 port=1 user=alice password=Sup3rS3cret dbname=x"
    clock = FakeClock()
    store = ProgressStore(dsn, patience=60, backoff_max=10, sleep=clock.sleep, clock=clock, connect_timeout=2)
    with pytest.raises(StoreError, match="Connection refused") as info:
        store.check()
    assert "Sup3rS3cret" not in str(info.value) and "\n" not in str(info.value)
    assert 60 <= clock.now < 70 and max(clock.sleeps) <= 10  # capped
    assert len(set(clock.sleeps)) > len(clock.sleeps) // 2  # jittered
    waits = [r.message for r in caplog.records if "waiting for the database" in r.message]
    assert len(waits) == len(clock.sleeps)  # a line per retry
    assert "Sup3rS3cret" not in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (" dbname=no_such_db", 'database "no_such_db" does not exist'),
        (" user=no_such_role", 'role "no_such_role" does not exist'),
        (" port=notaport", 'invalid integer value "notaport"'),
    ],
    ids=["database", "role", "dsn"],
)
def test_a_wrong_database_role_or_dsn_fails_at_once(pg_dsn: str, extra: str, message: str) -> None:
    clock = FakeClock()
    store = ProgressStore(pg_dsn + extra, patience=600, sleep=clock.sleep, clock=clock)
    with pytest.raises(StoreError, match=message) as info:
        store.check()
    assert clock.sleeps == [] and "\n" not in str(info.value)


def test_a_full_server_is_waited_for_until_a_slot_frees(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fill every connection slot of the real server (53300 for the next client), then free one."""
    import threading

    with psycopg.connect(pg_dsn) as probe:
        limit = int(probe.execute("SHOW max_connections").fetchone()[0])
    hogs: list[psycopg.Connection] = []
    try:
        for _ in range(limit + 1):  # a superuser may take the reserved slots too
            try:
                hogs.append(psycopg.connect(pg_dsn, autocommit=True))
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc) or "reserved" in str(exc)
                break
        else:
            pytest.fail("the server never ran out of connection slots")
        store = ProgressStore(pg_dsn, patience=60, backoff_max=0.5)
        done = threading.Event()
        worker = threading.Thread(target=lambda: (store.check(), done.set()), daemon=True)
        worker.start()
        assert not done.wait(2.0), "connected although the server is full"
        waits = [r.message for r in caplog.records if "waiting for the database" in r.message]
        assert waits and all("too many clients" in m for m in waits)
        hogs.pop().close()
        assert done.wait(10.0), "never connected after a slot freed"
        store.close()
    finally:
        for conn in hogs:
            conn.close()


def test_redact_dsn_forms() -> None:
    assert redact_dsn("postgresql://u:Sup3rS3cret@h/db") == "postgresql://u:***@h/db"
    assert redact_dsn("host=h password='Sup3r S3cret' user=u") == "host=h password=*** user=u"
    assert redact_dsn("host=h PASSWORD=Sup3rS3cret") == "host=h PASSWORD=***"


def test_a_dataset_run_is_held_by_one_process_and_a_taken_over_one_is_fenced(pg_dsn: str) -> None:
    from streaming_pipeline.errors import LeaseLost, RunBusy

    store = ProgressStore(pg_dsn)
    store.init_schema()
    spec = DatasetRun("r1", source="src", config_name=None, split="train", output="out")
    run = dict(resume=False, lease_s=60)
    first = store.datasets.start(spec, owner=Owner("7_1", "n1", 1), **run)
    with pytest.raises(RunBusy, match="r1 is being processed by job 7_1 on n1"):
        store.datasets.start(spec, owner=Owner(None, "n2", 2), **run)
    # A requeued run of the same job takes it over at once (holder_is_gone decides that).
    again = store.datasets.start(spec, owner=Owner("7_1", "n1", 3), may_take=lambda h: True, **run)
    assert again.lease_token == first.lease_token + 1
    stale = ProgressStore(pg_dsn)
    stale.hold("r1", first.lease_token, table="dataset_runs")
    with pytest.raises(LeaseLost, match="lost the lease on r1 to job 7_1 on n1 \\(pid 3\\)"):
        stale.datasets.finish("r1", state="done", error=None)
    assert store.query("SELECT state FROM dataset_runs")[0]["state"] == "running"
    stale.close()
    store.close()


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server that asks role `archivist` for its password (scram-sha-256) over TCP; the
    embedded server trusts everyone, so the rule is written into its pg_hba.conf."""
    state = Path(tempfile.mkdtemp(prefix="streaming-pipeline-test-pgpw-"))  # reachable by `postgres`
    server = EmbeddedPostgres(state)
    dsn = server.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute("CREATE ROLE archivist LOGIN PASSWORD 'Corr3ct-h0rse'")
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text("host all archivist 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)  # the postmaster rereads pg_hba.conf on SIGHUP
    yield dsn.replace("user=postgres", "user=archivist")
    server.stop()
    shutil.rmtree(state, ignore_errors=True)


def test_the_right_password_connects_and_a_wrong_one_fails_at_once_without_either(
    password_server: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    ProgressStore(password_server + " password=Corr3ct-h0rse").check()
    clock = FakeClock()
    wrong = password_server + " password=Wr0ng-battery"
    store = ProgressStore(wrong, patience=1800, sleep=clock.sleep, clock=clock)
    with pytest.raises(StoreError, match='password authentication failed for user "archivist"') as info:
        store.check()
    assert clock.sleeps == []  # not waited for: no retry cures a wrong password
    assert "\n" not in str(info.value) and "Wr0ng-battery" not in str(info.value)
    # The CLI a user runs: one line, exit 1 at once, the password nowhere.
    started = time.monotonic()
    assert main(["status", "2025-01-25", "--dsn", wrong]) != 0
    assert time.monotonic() - started < 10
    out = capsys.readouterr()
    assert "password authentication failed" in out.err + out.out
    for text in (out.err, out.out, caplog.text):
        assert "Wr0ng-battery" not in text and "Corr3ct-h0rse" not in text


def test_each_class_in_state_describes_one_concern_in_under_250_lines() -> None:
    import ast

    from ..conftest import REPO

    for path in sorted((REPO / "src" / "streaming_pipeline" / "state").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                assert lines <= 250, f"{path.name}: {node.name} is {lines} lines"

"""The lease's gate on uploads: what a worker asks before every rsync (state/lease.py)."""

from __future__ import annotations

import datetime as dt
import logging
import time

import pytest

from streaming_pipeline.errors import LeaseLost
from streaming_pipeline.state.lease import upload_gate
from streaming_pipeline.state.store import ArchiveKey, Owner, ProgressStore

KEY = ArchiveKey("2025-01-25/12_30.tar.xz", dt.date(2025, 1, 25), "12_30")


def _claim(store: ProgressStore, pid: int, lease_s: float) -> int:
    owner = Owner(None, f"node{pid}", pid)
    claim = store.leases.claim(KEY, path="/x.tar.xz", owner=owner, lease_s=lease_s, may_take=lambda h: False)
    assert claim.token is not None
    return claim.token


def test_the_gate_opens_while_the_lease_is_ours_and_names_the_taker_once_it_is_not(pg_dsn: str) -> None:
    stalled, successor = ProgressStore(pg_dsn), ProgressStore(pg_dsn)
    stalled.init_schema()
    stalled.hold(KEY.archive, _claim(stalled, 1, lease_s=0.2))
    gate = upload_gate(stalled)
    assert gate() is None
    time.sleep(0.3)  # the first worker stalls past its lease; the next claim takes the archive
    _claim(successor, 2, lease_s=60)
    reason = gate()
    assert reason is not None and "to a job outside Slurm on node2 (pid 2)" in reason
    with pytest.raises(LeaseLost):  # and every later write of the stalled worker fails at once
        stalled.archives.progress(KEY.archive, bytes_read=1, members_seen=1)
    stalled.close()
    successor.close()


def test_a_database_that_cannot_answer_does_not_hold_uploads_back(caplog: pytest.LogCaptureFixture) -> None:
    store = ProgressStore("host=127.0.0.1 port=9 dbname=x user=x password=hunter2", patience=0)
    store.hold(KEY.archive, 1)
    with caplog.at_level(logging.WARNING):
        assert upload_gate(store)() is None  # the record after the upload is fenced
    assert "lease not confirmed before an upload" in caplog.text and "hunter2" not in caplog.text


def test_a_stopping_worker_marks_its_archive_interrupted_under_its_lease(pg_dsn: str) -> None:
    """What a worker records the moment a stop is asked for: its running archive `interrupted`
    (a SIGKILL after scancel's KillWait then leaves nothing `running`); its end writes over it; a
    worker whose lease was taken writes nothing."""
    key = ArchiveKey("2025-01-26/06_00.tar.xz", dt.date(2025, 1, 26), "06_00")
    stopping, successor = ProgressStore(pg_dsn), ProgressStore(pg_dsn)
    stopping.init_schema()
    owner = Owner(None, "node1", 1)
    claim = stopping.leases.claim(key, path="/y.tar.xz", owner=owner, lease_s=0.3, may_take=lambda h: False)
    assert claim.token is not None
    stopping.hold(key.archive, claim.token)
    stopping.archives.start(key, path="/y.tar.xz", bytes_total=1, owner=owner)
    stopping.archives.mark_interrupted(key.archive, "stopped by SIGTERM")

    def state() -> tuple[str, str | None]:
        (row,) = successor.query("SELECT state, error FROM archives WHERE archive = %s", (key.archive,))
        return row["state"], row["error"]

    assert state() == ("interrupted", "stopped by SIGTERM")
    stopping.archives.finish(key.archive, state="done", error=None, wall_s=1.0)
    stopping.archives.mark_interrupted(key.archive, "stopped by SIGTERM")  # only a running archive
    assert state() == ("done", None)

    stopping.archives.start(key, path="/y.tar.xz", bytes_total=1, owner=owner)
    time.sleep(0.4)  # past the lease: the next claim takes the archive
    taken = successor.leases.claim(
        key, path="/y.tar.xz", owner=Owner(None, "node2", 2), lease_s=60, may_take=lambda h: False
    )
    assert taken.token is not None
    with pytest.raises(LeaseLost):
        stopping.archives.mark_interrupted(key.archive, "stopped by SIGTERM")
    assert state()[0] == "running"
    stopping.close()
    successor.close()


def test_a_rerun_waits_for_a_stopping_holder_and_not_for_a_running_one(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`scancel` then a rerun at once: the new worker (on another node: it cannot see the old
    pid) takes a stopping archive as soon as the old lease ends; a running one is busy at once."""
    from streaming_pipeline.state import lease as lease_module
    from streaming_pipeline.state.lease import ArchiveBusy, ArchiveLease

    monkeypatch.setattr(lease_module, "STOPPING_POLL_S", 0.1)
    key = ArchiveKey("2025-01-27/06_00.tar.xz", dt.date(2025, 1, 27), "06_00")
    old, new = ProgressStore(pg_dsn), ProgressStore(pg_dsn)
    old.init_schema()
    owner = Owner("70_0", "node1", 1)
    claim = old.leases.claim(key, path="/z.tar.xz", owner=owner, lease_s=1.0, may_take=lambda h: False)
    assert claim.token is not None
    old.hold(key.archive, claim.token)
    old.archives.start(key, path="/z.tar.xz", bytes_total=1, owner=owner)

    rerun = ArchiveLease(new, key, path="/z.tar.xz", owner=Owner("78_0", "node2", 2), lease_s=5.0)
    started = time.monotonic()
    with pytest.raises(ArchiveBusy):  # running, not stopping: a second worker does not start
        rerun.acquire()
    assert time.monotonic() - started < 1.0
    old.archives.mark_interrupted(key.archive, "stopped by SIGTERM")  # then SIGKILL: no release
    rerun.acquire()
    assert 0.5 < time.monotonic() - started < 4.0, "waited for the old lease, not longer"
    assert rerun.token is not None and rerun.token > claim.token
    rerun.release()
    old.close()
    new.close()

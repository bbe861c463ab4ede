from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streaming_pipeline.destination import Destination, Rsync
from streaming_pipeline.stages.upload import UploadJob, Uploads, UploadState

from ..conftest import RsyncDaemon


def _tree(root: Path) -> Path:
    (root / "2025-01-25" / "12_30" / "a").mkdir(parents=True)
    (root / "2025-01-25" / "12_30" / "a" / "x.flac").write_bytes(b"flac")
    (root / "2025-01-25" / "12_30" / "a" / "x.json").write_text("{}")
    return root


def _upload(manager: Uploads, source: Path) -> UploadJob:
    finished = threading.Event()
    seen: list[UploadJob] = []
    manager.submit(source, "test", lambda job: (seen.append(job), finished.set()))
    assert finished.wait(30)
    assert manager.wait(5)
    return seen[0]


@pytest.mark.parametrize("kind", ["local", "daemon"])
def test_upload_to_local_path_and_daemon(tmp_path: Path, rsync_daemon: RsyncDaemon, kind: str) -> None:
    source = _tree(tmp_path / "stage")
    if kind == "local":
        dest, root = Destination.parse(str(tmp_path / "remote")), tmp_path / "remote"
        dest.prepare()
    else:
        dest, root = Destination.parse(rsync_daemon.url), rsync_daemon.data
    manager = Uploads(Rsync(dest, timeout=30, retries=2), max_concurrent=2)
    job = _upload(manager, source)
    manager.close()
    assert job.state is UploadState.DONE and job.attempts == 1
    assert (root / "2025-01-25/12_30/a/x.flac").read_bytes() == b"flac"
    assert manager.counts()["done"] == 1


def test_a_daemon_module_with_a_password_file(tmp_path: Path) -> None:
    """A module with `auth users` and a secrets file: the password file (never the password)
    goes on rsync's command line; without it, rsync's refusal is told and not retried."""
    daemon = RsyncDaemon(tmp_path / "rsyncd", password="s3cret-module-pw")
    daemon.start()
    try:
        source = _tree(tmp_path / "stage")
        dest = Destination.parse(f"rsync://pipeline@127.0.0.1:{daemon.port}/archive")
        secret = tmp_path / "rsync.pass"
        secret.write_text("s3cret-module-pw\n")
        secret.chmod(0o600)
        client = Rsync(dest, timeout=30, retries=2, password_file=secret)
        assert f"--password-file={secret}" in client.send_command(source)
        assert not any("s3cret" in part for part in client.send_command(source))
        manager = Uploads(client, max_concurrent=1)
        job = _upload(manager, source)
        manager.close()
        assert job.state is UploadState.DONE and (daemon.data / "2025-01-25/12_30/a/x.flac").is_file()

        refused = Uploads(Rsync(dest, timeout=30, retries=3, sleep=lambda s: None), max_concurrent=1)
        job = _upload(refused, source)
        refused.close()
        assert job.state is UploadState.FAILED and job.attempts == 1, "an auth failure is not retried"
        assert "auth failed" in (job.error or ""), job.error
    finally:
        daemon.stop()


def test_dead_daemon_is_retried_with_backoff_then_fails(tmp_path: Path) -> None:
    sleeps: list[float] = []
    dest = Destination.parse("rsync://127.0.0.1:9/archive")  # nothing listens on the discard port
    manager = Uploads(Rsync(dest, timeout=5, retries=3, sleep=sleeps.append), max_concurrent=1)
    job = _upload(manager, _tree(tmp_path / "stage"))
    manager.close()
    assert job.state is UploadState.FAILED
    assert job.attempts == 3 and job.returncode == 10
    assert "rsync exit 10" in (job.error or "")
    assert sleeps == sorted(sleeps) and len(sleeps) == 2  # exponential backoff between attempts


def _scripted(
    codes: list[int], spec: str, retries: int, gate: Callable[[], str | None] | None = None
) -> tuple[Uploads, list[list[str]]]:
    """A manager whose rsync is a fake returning `codes` in turn: a real rsync cannot be made
    to exit with a chosen code on demand."""
    calls: list[list[str]] = []

    def runner(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, codes.pop(0), "", "rsync: simulated failure")

    rsync = Rsync(Destination.parse(spec), timeout=5, retries=retries, runner=runner, sleep=lambda s: None)
    manager = Uploads(rsync, max_concurrent=1, gate=gate)
    return manager, calls


def test_non_retryable_exit_code_is_not_retried(tmp_path: Path) -> None:
    manager, calls = _scripted([3, 0], "rsync://127.0.0.1/x", retries=5)  # 3: file selection error
    job = _upload(manager, _tree(tmp_path / "stage"))
    assert job.state is UploadState.FAILED and job.attempts == 1 and job.returncode == 3
    assert len(calls) == 1


def test_transient_code_recovers_and_command_is_an_argument_list(tmp_path: Path) -> None:
    manager, calls = _scripted([12, 0], "host:/data/out", retries=3)  # 12: data stream broke
    job = _upload(manager, _tree(tmp_path / "stage"))
    assert job.state is UploadState.DONE and job.attempts == 2
    cmd = calls[0]
    assert isinstance(cmd, list) and cmd[0] == "rsync"
    assert cmd[-3] == "--" and cmd[-1] == "host:/data/out/"


def test_destination_rejects_option_like_spec() -> None:
    from streaming_pipeline.errors import ConfigError

    with pytest.raises(ConfigError):
        Destination.parse("--rsh=evil")
    with pytest.raises(ConfigError):
        Destination.parse("")


def test_a_closed_gate_withdraws_the_upload_before_rsync_runs(tmp_path: Path) -> None:
    """A worker that lost its archive (state/lease.upload_gate) sends nothing: a real rsync to a
    local path, and the destination stays empty."""
    dest = Destination.parse(str(tmp_path / "remote"))
    dest.prepare()
    manager = Uploads(
        Rsync(dest, timeout=30, retries=3), max_concurrent=1, gate=lambda: "lost the lease on a to pid 2"
    )
    job = _upload(manager, _tree(tmp_path / "stage"))
    manager.close()
    assert job.state is UploadState.WITHDRAWN and job.attempts == 0
    assert job.error == "lost the lease on a to pid 2"
    assert not any((tmp_path / "remote").iterdir())
    assert manager.counts()["withdrawn"] == 1


def test_the_gate_is_asked_again_before_each_retry(tmp_path: Path) -> None:
    answers = [None, "lost the lease"]  # the lease is taken during the backoff
    manager, calls = _scripted([12, 0], "host:/data/out", retries=3, gate=lambda: answers.pop(0))
    job = _upload(manager, _tree(tmp_path / "stage"))
    assert job.state is UploadState.WITHDRAWN and len(calls) == 1 and job.attempts == 1


def test_abort_ends_an_rsync_hanging_on_a_stopped_daemon_and_withdraws_the_queued_ones(
    tmp_path: Path, rsync_daemon: RsyncDaemon
) -> None:
    """The daemon is stopped (SIGSTOP): it accepts connections and never answers, so rsync
    waits out its timeout, and the retries after it. A stopping run's grace ends that: abort
    kills the running rsync's process group at once and withdraws what is queued."""
    manager = Uploads(Rsync(Destination.parse(rsync_daemon.url), timeout=300, retries=5), max_concurrent=1)
    finished: list[UploadJob] = []
    stages = []
    for n in range(3):
        stage = tmp_path / f"stage-{n}"
        (stage / "d").mkdir(parents=True)
        (stage / "d" / f"{n}.flac").write_bytes(b"x" * 1000)
        stages.append(stage)
    assert rsync_daemon.proc is not None
    rsync_daemon.proc.send_signal(signal.SIGSTOP)
    try:
        jobs = [manager.submit(stage, f"batch {n}", finished.append) for n, stage in enumerate(stages)]
        deadline = time.monotonic() + 30
        while not manager.rsync.running:  # rsync started and is waiting for the daemon
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not manager.wait(timeout=1.0)
        started = time.monotonic()
        manager.abort("stopped by SIGUSR1 ended them after 1s")
        assert manager.wait(timeout=60)
        assert time.monotonic() - started < 30  # not the 300 s timeout, nor 5 attempts of it
        manager.close()
    finally:
        rsync_daemon.proc.send_signal(signal.SIGCONT)
    assert [j.state for j in jobs] == [UploadState.WITHDRAWN] * 3
    assert {j.error for j in jobs} == {"stopped by SIGUSR1 ended them after 1s"}
    assert jobs[0].attempts == 1 and jobs[1].attempts == jobs[2].attempts == 0
    assert len(finished) == 3
    assert not list(rsync_daemon.data.rglob("*.flac"))

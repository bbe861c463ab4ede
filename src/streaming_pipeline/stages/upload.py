"""Asynchronous uploads from a thread pool: each batch's staged tree sent with rsync, retried only
when rsync says it is transient, asked of a gate before every attempt.

Each upload sends one batch's staging tree (`<DATE>/<SLOT>/...`) to the destination root, so the
remote layout is built by rsync itself and no remote mkdir is needed. rsync writes into a hidden
temporary file and renames it at the end, so a partial file never has its final name. The rsync
client itself (commands, retries, ending a running rsync) is the destination's (destination.py).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..destination import Aborted, Rsync
from ..errors import UploadError

if TYPE_CHECKING:
    from ..config import DestinationSettings

log = logging.getLogger(__name__)


class UploadState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    WITHDRAWN = "withdrawn"  # never sent: the gate said this process may no longer write there


class _Withdrawn(Exception):
    """The gate refused an attempt (not an UploadError: never retried)."""


@dataclass
class UploadJob:
    job_id: int
    source: Path
    label: str
    state: UploadState = UploadState.QUEUED
    attempts: int = 0
    error: str | None = None
    returncode: int | None = None
    started: float = 0.0
    finished: float = 0.0
    future: Future[UploadJob] | None = field(default=None, repr=False)


class Uploads:
    """The upload stage: staged trees sent from a pool of threads (the `upload-N` threads run
    each job and its `on_finish`); `submit` is called from the run's own threads."""

    def __init__(
        self,
        rsync: Rsync,
        *,
        max_concurrent: int,
        gate: Callable[[], str | None] | None = None,
    ) -> None:
        """`gate`, asked before every rsync attempt: why this process may no longer write to the
        destination (a worker whose archive was taken over), or None. A job it stops is
        WITHDRAWN, not retried."""
        self.rsync = rsync
        self.destination = rsync.destination
        self._gate = gate
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="upload")
        self._lock = threading.Lock()
        self._jobs: list[UploadJob] = []

    @classmethod
    def of(
        cls,
        settings: DestinationSettings,
        *,
        max_concurrent: int | None = None,
        gate: Callable[[], str | None] | None = None,
    ) -> Uploads:
        """Uploads to the configured destination, with its rsync policy and upload threads."""
        return cls(
            Rsync.of(settings),
            max_concurrent=max_concurrent or settings.max_concurrent_uploads,
            gate=gate,
        )

    def submit(self, source: Path, label: str, on_finish: Callable[[UploadJob], None]) -> UploadJob:
        with self._lock:
            job = UploadJob(job_id=len(self._jobs), source=source, label=label)
            self._jobs.append(job)
        log.info("upload %s queued (%s)", label, self._counts_text())
        job.future = self._pool.submit(self._run_job, job, on_finish)
        return job

    def submit_file(
        self, path: Path, relpath: str, stage: Path, label: str, on_finish: Callable[[UploadJob], None]
    ) -> UploadJob:
        """Upload one file to `<destination>/<relpath>`: it is moved into `stage`, a staging tree
        of its own (the pool sends trees), which `on_finish` may remove."""
        target = stage / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
        return self.submit(stage, label, on_finish)

    def put_text(self, text: str, relpath: str, stage: Path) -> None:
        """Write `text` to `<destination>/<relpath>` now (a dataset card), with the retry policy."""
        staged = stage / "text"
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(text, encoding="utf-8")
        job = self.submit_file(staged, relpath, stage / "tree", relpath, on_finish=lambda _job: None)
        assert job.future is not None
        job.future.result()
        if job.state is not UploadState.DONE:
            raise UploadError(f"upload of {relpath} failed: {job.error}", job.returncode, retryable=False)

    def _run_job(self, job: UploadJob, on_finish: Callable[[UploadJob], None]) -> UploadJob:
        """An upload thread: the job's attempts, its final state, then `on_finish`."""
        job.state = UploadState.RUNNING
        job.started = time.monotonic()
        try:
            self.rsync.retrying(job.label, lambda: self._attempt(job))
            job.state = UploadState.DONE
        except (_Withdrawn, Aborted) as exc:
            job.state = UploadState.WITHDRAWN
            job.error = str(exc)
        except UploadError as exc:
            job.state = UploadState.FAILED
            job.error = str(exc)
            job.returncode = exc.returncode
        except Exception as exc:  # noqa: BLE001 - a job must always reach a final state
            job.state = UploadState.FAILED
            job.error = f"{type(exc).__name__}: {exc}"
        job.finished = time.monotonic()
        if job.state is UploadState.DONE:
            log.info(
                "upload %s done in %.1fs after %d attempt(s)",
                job.label,
                job.finished - job.started,
                job.attempts,
            )
        elif job.state is UploadState.WITHDRAWN:
            log.warning("upload %s withdrawn: %s", job.label, job.error)
        else:
            log.error("upload %s failed after %d attempt(s): %s", job.label, job.attempts, job.error)
        try:
            on_finish(job)
        except Exception:  # a callback bug must not hide the upload's own outcome
            log.exception("upload %s: completion handler failed", job.label)
        return job

    def _attempt(self, job: UploadJob) -> None:
        reason = self.rsync.abort_reason
        if reason is None and self._gate is not None:
            reason = self._gate()
        if reason is not None:
            raise _Withdrawn(reason)
        job.attempts += 1
        self.rsync.send_once(job.source)

    def counts(self) -> dict[str, int]:
        with self._lock:
            jobs = list(self._jobs)
        counts = {s.value: 0 for s in UploadState}
        for job in jobs:
            counts[job.state.value] += 1
        return counts

    def _counts_text(self) -> str:
        c = self.counts()
        return "uploads queued={queued} running={running} done={done} failed={failed}".format(**c)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every submitted upload; False if some were still running at the timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            futures: Sequence[Future[UploadJob] | None] = [j.future for j in self._jobs]
        for fut in futures:
            if fut is None:
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                fut.result(timeout=remaining)
            except TimeoutError:
                return False
        return True

    def abort(self, reason: str) -> None:
        """End the rsyncs running now and withdraw every upload not yet done: a stopping run's
        grace is over. Their files stay where they were staged."""
        self.rsync.abort(reason)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

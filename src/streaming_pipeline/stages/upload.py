"""Asynchronous rsync uploads from a thread pool, retried only when rsync says it is transient.

Each upload sends one batch's staging tree (`<DATE>/<SLOT>/...`) to the destination root, so the
remote layout is built by rsync itself and no remote mkdir is needed. rsync writes into a hidden
temporary file and renames it at the end, so a partial file never has its final name.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..errors import ConfigError, UploadError

if TYPE_CHECKING:
    from ..config import PipelineConfig

log = logging.getLogger(__name__)

# rsync(1) EXIT VALUES that a later attempt can cure: 5 (starting the protocol), 10 (socket I/O),
# 12 (data stream broke), 30 (I/O timeout), 35 (daemon connect timeout), 255 (ssh failed).
# Everything else (syntax, protocol mismatch, permissions, missing files) fails at once.
RETRYABLE_RSYNC_CODES = frozenset({5, 10, 12, 30, 35, 255})

Runner = Callable[..., subprocess.CompletedProcess[str]]


class UploadState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    WITHDRAWN = "withdrawn"  # never sent: the gate said this process may no longer write there


@dataclass(frozen=True)
class Destination:
    """A local path, `host:path` (ssh) or `rsync://host[:port]/module/path`."""

    spec: str

    @classmethod
    def parse(cls, spec: str) -> Destination:
        if not spec:
            raise ConfigError("no destination: set --remote or PIPELINE_REMOTE")
        if spec.startswith("-"):
            raise ConfigError(f"destination {spec!r} looks like an option")
        return cls(spec.rstrip("/") or "/")

    @property
    def is_daemon(self) -> bool:
        return self.spec.startswith("rsync://") or "::" in self.spec

    @property
    def is_local(self) -> bool:
        return not self.is_daemon and ":" not in self.spec.split("/", 1)[0]

    def url(self, relpath: str = "") -> str:
        base = self.spec if self.spec != "/" else ""
        return f"{base}/{relpath}" if relpath else f"{base}/"

    def relpath(self, url: str) -> str:
        """The path under this destination's root that `url` (as recorded by `url()`) names."""
        base = self.url()
        if not url.startswith(base):
            raise UploadError(
                f"{url} is not under the destination {self.spec}: use the --remote the files were "
                "uploaded to",
                returncode=None,
                retryable=False,
            )
        return url[len(base) :]

    def prepare(self) -> None:
        if self.is_local:
            Path(self.spec).mkdir(parents=True, exist_ok=True)


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


class AsyncRsyncStorageManager:
    def __init__(
        self,
        destination: Destination,
        *,
        max_concurrent: int,
        timeout: float,
        retries: int,
        backoff_max: float = 60.0,
        sleep: Callable[[float], None] | None = None,
        runner: Runner | None = None,
        gate: Callable[[], str | None] | None = None,
    ) -> None:
        """`gate`, asked before every rsync attempt: why this process may no longer write to the
        destination (a worker whose archive was taken over), or None. A job it stops is
        WITHDRAWN, not retried. `runner` stands in for subprocess.run (a test's rsync exit code);
        by default rsync runs in a process group of its own, which `abort` ends."""
        self.destination = destination
        self._gate = gate
        self.timeout = timeout
        self.retries = retries
        self.backoff_max = backoff_max
        self._aborted = threading.Event()
        self._abort_reason = ""
        # a backoff ends when the uploads are aborted
        self._sleep: Callable[[float], object] = sleep or self._aborted.wait
        self._run = runner or self._run_group
        self._running: set[subprocess.Popen[str]] = set()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="upload")
        self._lock = threading.Lock()
        self._jobs: list[UploadJob] = []

    @classmethod
    def from_config(
        cls,
        config: PipelineConfig,
        destination: Destination,
        *,
        max_concurrent: int | None = None,
        gate: Callable[[], str | None] | None = None,
    ) -> AsyncRsyncStorageManager:
        """A manager with the configured timeout, retries and backoff (and upload threads)."""
        return cls(
            destination,
            max_concurrent=max_concurrent or config.max_concurrent_uploads,
            timeout=config.upload_timeout,
            retries=config.upload_retries,
            backoff_max=config.upload_backoff_max,
            gate=gate,
        )

    def rsync_command(self, source: Path) -> list[str]:
        """The upload of the staged tree `source` to the destination."""
        options = ["--recursive", "--times", "--chmod=D755,F644"]
        return self._rsync(options, f"{source.resolve()}/", self.destination.url())

    def _rsync(self, options: Sequence[str], source: str, target: str) -> list[str]:
        """Every rsync this manager runs: its options, the I/O (and a daemon's connect) timeout,
        then `--`, so that neither path can ever be taken for an option; both are ours (absolute
        scratch paths, the parsed destination)."""
        cmd = ["rsync", *options, f"--timeout={max(1, int(self.timeout))}"]
        if self.destination.is_daemon:
            cmd.append(f"--contimeout={max(1, int(min(self.timeout, 30)))}")
        return [*cmd, "--", source, target]

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
        of its own (the manager sends trees), which `on_finish` may remove."""
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
        job.state = UploadState.RUNNING
        job.started = time.monotonic()
        try:
            self._retrying(job.label)(self._attempt, job)
            job.state = UploadState.DONE
        except _Withdrawn as exc:
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

    def fetch(self, relpaths: Sequence[str], target: Path, label: str) -> None:
        """Copy files from the destination into `target` under the same relative paths, in one
        rsync with the upload's retry policy (export reads back what the workers uploaded)."""
        target.mkdir(parents=True, exist_ok=True)
        listing = target.with_name(f".{target.name}.files")
        _write_listing(listing, relpaths)
        options = ["--times", "--from0", f"--files-from={listing}"]
        cmd = self._rsync(options, self.destination.url(), f"{target.resolve()}/")
        try:
            self._retrying(label)(self._execute, cmd)
        finally:
            listing.unlink(missing_ok=True)

    def existing(self, relpaths: Sequence[str], workdir: Path) -> set[str]:
        """Which of `relpaths` are on the destination (a dry-run transfer into an empty folder
        lists what exists; missing files make rsync exit 23, which is the answer, not an error)."""
        workdir.mkdir(parents=True, exist_ok=True)
        listing = workdir / "files"
        _write_listing(listing, relpaths)
        (workdir / "empty").mkdir(exist_ok=True)
        options = ["--dry-run", "--from0", f"--files-from={listing}", "--out-format=%n", "--8-bit-output"]
        cmd = self._rsync(options, self.destination.url(), f"{(workdir / 'empty').resolve()}/")
        out: list[str] = []
        self._retrying("existence check")(lambda: out.append(self._execute(cmd, ok=(0, 23))))
        return {line for line in out[-1].splitlines() if line and not line.endswith("/")} & set(relpaths)

    def _retrying(self, label: str) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.retries),
            wait=wait_exponential(multiplier=1, min=1, max=self.backoff_max),
            retry=retry_if_exception(lambda e: isinstance(e, UploadError) and e.retryable),
            before_sleep=lambda state: self._log_retry(label, state),
            sleep=self._backoff,
            reraise=True,
        )

    def _backoff(self, seconds: float) -> None:
        self._sleep(seconds)

    def _attempt(self, job: UploadJob) -> None:
        reason = self._abort_reason if self._aborted.is_set() else None
        if reason is None and self._gate is not None:
            reason = self._gate()
        if reason is not None:
            raise _Withdrawn(reason)
        job.attempts += 1
        self._execute(self.rsync_command(job.source))

    def _execute(self, cmd: list[str], ok: tuple[int, ...] = (0,)) -> str:
        """Run rsync once; its stdout, or UploadError saying whether a retry may help."""
        try:
            proc = self._run(cmd, capture_output=True, text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise UploadError(
                f"rsync with {self.destination.spec} timed out after {self.timeout:.0f}s",
                returncode=None,
                retryable=True,
            ) from None
        except FileNotFoundError:
            raise UploadError("rsync is not installed", returncode=None, retryable=False) from None
        if self._aborted.is_set() and proc.returncode not in ok:
            raise _Withdrawn(self._abort_reason)
        if proc.returncode not in ok:
            message = " ".join((proc.stderr or "").split())[:500] or "no message"
            raise UploadError(
                f"rsync exit {proc.returncode}: {message}",
                returncode=proc.returncode,
                retryable=proc.returncode in RETRYABLE_RSYNC_CODES,
            )
        return proc.stdout or ""

    def _log_retry(self, label: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "rsync %s attempt %d failed (%s); retrying in %.1fs",
            label,
            state.attempt_number,
            exc,
            delay,
        )

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
        """End the rsyncs running now (their process groups) and withdraw every upload not yet
        done: a stopping run's grace is over. Their files stay where they were staged."""
        with self._lock:
            self._abort_reason = reason
            self._aborted.set()
            running = list(self._running)
        for proc in running:
            _end_group(proc)
        if running:
            log.warning("ended %d running rsync(s): %s", len(running), reason)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    def _run_group(
        self, cmd: list[str], *, capture_output: bool, text: bool, timeout: float, check: bool
    ) -> subprocess.CompletedProcess[str]:
        """subprocess.run, in a process group of its own that `abort` (or the timeout) ends whole."""
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        ) as proc:
            with self._lock:
                self._running.add(proc)
            try:
                if self._aborted.is_set():
                    _end_group(proc)
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _end_group(proc)
                proc.communicate()
                raise
            finally:
                with self._lock:
                    self._running.discard(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _end_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group `proc` leads (rsync and the children it forked)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _write_listing(path: Path, relpaths: Sequence[str]) -> None:
    """An rsync --files-from list, NUL-separated (--from0): any name is one entry."""
    path.write_bytes(b"".join(p.encode() + b"\0" for p in relpaths))

"""The destination: where members' files live once uploaded, and the rsync client that writes and
reads them there (datatrove's `io.DataFolder` plays the same part).

Every module that touches the destination's files goes through here: the upload stage sends a
batch's staged tree, the web view and the export fetch files back, a rerun and the index ask
which files exist. One rsync command builder, one retry policy, one place that ends a running
rsync.

Threads: `Rsync` is called from any thread at once (the upload pool's, a web request's); its only
shared state, the running rsync processes and the abort flag, is behind a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from .errors import ConfigError, UploadError

if TYPE_CHECKING:
    from .config import DestinationSettings

log = logging.getLogger(__name__)

# rsync(1) EXIT VALUES that a later attempt can cure: 5 (starting the protocol), 10 (socket I/O),
# 12 (data stream broke), 30 (I/O timeout), 35 (daemon connect timeout), 255 (ssh failed).
# Everything else (syntax, protocol mismatch, permissions, missing files) fails at once.
RETRYABLE_RSYNC_CODES = frozenset({5, 10, 12, 30, 35, 255})
# ... except a daemon's refusal of the user or password, which exits 5 too.
AUTH_FAILED = "@ERROR: auth failed"
AUTH_HINT = "the module's user is in the URL, rsync://USER@host/module; its password in --rsync-password-file"

Runner = Callable[..., subprocess.CompletedProcess[str]]
T = TypeVar("T")


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


class Aborted(Exception):
    """The client was aborted (a stopping run's grace is over): never retried."""


class Rsync:
    """rsync to and from one destination: send a staged tree, fetch files back, list which exist.

    Each call is one rsync with the capped, logged retry policy for the exit codes that a later
    attempt can cure. `runner` stands in for subprocess.run (a test's rsync exit code); by
    default rsync runs in a process group of its own, which `abort` ends."""

    def __init__(
        self,
        destination: Destination,
        *,
        timeout: float,
        retries: int,
        backoff_max: float = 60.0,
        sleep: Callable[[float], None] | None = None,
        runner: Runner | None = None,
        password_file: Path | None = None,
    ) -> None:
        self.destination = destination
        self.password_file = password_file  # an rsync daemon's (never its password in argv)
        self.timeout = timeout
        self.retries = retries
        self.backoff_max = backoff_max
        self._lock = threading.Lock()
        self._aborted = threading.Event()
        self._abort_reason = ""
        # a backoff ends when the client is aborted
        self._sleep: Callable[[float], object] = sleep or self._aborted.wait
        self._run = runner or self._run_group
        self._running: set[subprocess.Popen[str]] = set()

    @classmethod
    def of(cls, settings: DestinationSettings) -> Rsync:
        """A client of the configured destination, with its timeout, retries and backoff."""
        return cls(
            Destination.parse(settings.remote),
            timeout=settings.upload_timeout,
            retries=settings.upload_retries,
            backoff_max=settings.upload_backoff_max,
            password_file=settings.rsync_password_file,
        )

    # -- the three transfers ------------------------------------------------------------------

    def send_command(self, tree: Path) -> list[str]:
        """The upload of the staged tree `tree` to the destination's root."""
        options = ["--recursive", "--times", "--chmod=D755,F644"]
        return self._command(options, f"{tree.resolve()}/", self.destination.url())

    def send_once(self, tree: Path) -> None:
        """One attempt at sending `tree` (the upload pool retries, asking its gate each time)."""
        self._execute(self.send_command(tree))

    def fetch(self, relpaths: Sequence[str], target: Path, label: str) -> None:
        """Copy files from the destination into `target` under the same relative paths, in one
        rsync (export and the web view read back what the workers uploaded)."""
        target.mkdir(parents=True, exist_ok=True)
        listing = target.with_name(f".{target.name}.files")
        _write_listing(listing, relpaths)
        options = ["--times", "--from0", f"--files-from={listing}"]
        cmd = self._command(options, self.destination.url(), f"{target.resolve()}/")
        try:
            self.retrying(label, lambda: self._execute(cmd))
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
        cmd = self._command(options, self.destination.url(), f"{(workdir / 'empty').resolve()}/")
        out = self.retrying("existence check", lambda: self._execute(cmd, ok=(0, 23)))
        return {line for line in out.splitlines() if line and not line.endswith("/")} & set(relpaths)

    # -- retries and stopping -----------------------------------------------------------------

    def retrying(self, label: str, attempt: Callable[[], T]) -> T:
        """`attempt()` until it succeeds, raises what is not a transient UploadError, or has used
        the retries; a log line per retry; the backoff doubles up to `backoff_max`."""
        retrying = Retrying(
            stop=stop_after_attempt(self.retries),
            wait=wait_exponential(multiplier=1, min=1, max=self.backoff_max),
            retry=retry_if_exception(lambda e: isinstance(e, UploadError) and e.retryable),
            before_sleep=lambda state: self._log_retry(label, state),
            sleep=self._backoff,
            reraise=True,
        )
        return retrying(attempt)

    @property
    def abort_reason(self) -> str | None:
        """Why the client was aborted, or None while it may run rsync."""
        return self._abort_reason if self._aborted.is_set() else None

    def abort(self, reason: str) -> None:
        """End the rsyncs running now (their process groups); every later call raises Aborted."""
        with self._lock:
            self._abort_reason = reason
            self._aborted.set()
            running = list(self._running)
        for proc in running:
            _end_group(proc)
        if running:
            log.warning("ended %d running rsync(s): %s", len(running), reason)

    @property
    def running(self) -> int:
        """rsync processes running now."""
        with self._lock:
            return len(self._running)

    # -- one rsync ----------------------------------------------------------------------------

    def _command(self, options: Sequence[str], source: str, target: str) -> list[str]:
        """Every rsync this client runs: its options, the I/O (and a daemon's connect) timeout,
        then `--`, so that neither path can ever be taken for an option; both are ours (absolute
        scratch paths, the parsed destination)."""
        cmd = ["rsync", *options, f"--timeout={max(1, int(self.timeout))}"]
        if self.destination.is_daemon:
            cmd.append(f"--contimeout={max(1, int(min(self.timeout, 30)))}")
            if self.password_file is not None:
                cmd.append(f"--password-file={self.password_file}")
        return [*cmd, "--", source, target]

    def _backoff(self, seconds: float) -> None:
        self._sleep(seconds)

    def _execute(self, cmd: list[str], ok: tuple[int, ...] = (0,)) -> str:
        """Run rsync once; its stdout, or UploadError saying whether a retry may help."""
        if self._aborted.is_set():
            raise Aborted(self._abort_reason)
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
            raise Aborted(self._abort_reason)
        if proc.returncode not in ok:
            message = " ".join((proc.stderr or "").split())[:500] or "no message"
            refused = AUTH_FAILED in message  # exit 5 as a dropped connection is, but never cured by waiting
            if refused:
                message += f" ({AUTH_HINT})"
            raise UploadError(
                f"rsync exit {proc.returncode}: {message}",
                returncode=proc.returncode,
                retryable=proc.returncode in RETRYABLE_RSYNC_CODES and not refused,
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

    def _run_group(
        self, cmd: list[str], *, capture_output: bool, text: bool, timeout: float, check: bool
    ) -> subprocess.CompletedProcess[str]:
        """subprocess.run, in a process group of its own that `abort` (or the timeout) ends whole."""
        with subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,  # never a password prompt: a daemon's password comes from a file
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
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

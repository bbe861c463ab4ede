"""The day's fan-out on one machine: each archive in its own `process-tar` process.

A process per archive, as on Slurm, so a crash or a leak stays with its archive and the same
code path (locking, resume, logs) runs in both places. Children get their own session, so a
Ctrl-C in the terminal reaches only this process, which forwards exactly one SIGTERM: each child
then stops cleanly (a second signal would make it exit at once).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from .config import PipelineConfig, config_env
from .day import DayArchive

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, config: PipelineConfig, env: Mapping[str, str], python: str = sys.executable) -> None:
        self.config = config
        self.env = {**env, **config_env(config), "PYTHONUNBUFFERED": "1"}
        for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
            self.env.pop(var, None)  # children are not this job's Slurm tasks
        self.python = python
        self.job_id = f"local-{os.getpid()}"
        self._stop = threading.Event()
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()  # stop() may run in a signal handler on this thread

    def log_path(self, day: dt.date, archive: DayArchive) -> Path:
        return self.config.log_dir.resolve() / f"stream_tar_{day}_{archive.slot}_{self.job_id}.out"

    def stop(self) -> None:
        """Start nothing new and ask running workers to stop cleanly. Safe from a signal handler."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.signal_workers()

    def signal_workers(self) -> None:
        """SIGTERM to each running worker: the first asks it to stop, a second makes it exit now."""
        with self._lock:
            for proc in self._running.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def run(self, day: dt.date, todo: Sequence[DayArchive]) -> dict[str, int]:
        """Run the archives, `max_parallel` at a time; returns each started archive's exit status."""
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, int] = {}
        pending = list(todo)
        done = threading.Condition()
        while pending or self._running:
            with done:
                while pending and len(self._running) < self.config.max_parallel and not self._stop.is_set():
                    archive = pending.pop(0)
                    self._start(day, archive, done, results)
                if self._stop.is_set():
                    pending.clear()
                if self._running:
                    done.wait(timeout=1.0)
        return results

    def _start(
        self, day: dt.date, archive: DayArchive, done: threading.Condition, results: dict[str, int]
    ) -> None:
        argv = [
            self.python,
            "-m",
            "streaming_pipeline",
            "process-tar",
            str(day),
            str(archive.path),
            archive.slot,
        ]
        log_path = self.log_path(day, archive)
        log.info("starting %s (log %s)", archive.key.archive, log_path)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        with self._lock:
            self._running[archive.key.archive] = proc

        def reap() -> None:
            rc = proc.wait()
            with done:
                with self._lock:
                    del self._running[archive.key.archive]
                results[archive.key.archive] = rc
                log.info("%s finished with exit status %d", archive.key.archive, rc)
                done.notify_all()

        threading.Thread(target=reap, name=f"reap-{archive.slot}", daemon=True).start()

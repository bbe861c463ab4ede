"""The days run on one machine, day after day: each archive in its own `process-tar` process.

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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..config import PipelineConfig, config_env
from ..run.control import EXIT_INTERRUPTED, StopSignals
from .executor import DayBook
from .plan import DayArchive, DayPlan

log = logging.getLogger(__name__)


class LocalExecutor:
    """All bookkeeping happens on the calling thread; signal handlers run there too, between
    bytecodes, so `stop()` needs no lock."""

    name = "local"

    def __init__(
        self,
        config: PipelineConfig,
        env: Mapping[str, str],
        python: str = sys.executable,
        preflight: Callable[[Path], None] = lambda archive: None,  # this machine's checks
    ) -> None:
        self.config = config
        self._preflight = preflight
        self.env = {**env, **config_env(config), "PYTHONUNBUFFERED": "1"}
        for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
            self.env.pop(var, None)  # children are not this job's Slurm tasks
        self.python = python
        self.job_id = f"local-{os.getpid()}"
        self._stopping = False
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def preflight(self, archive: Path) -> None:
        self._preflight(archive)

    def run(self, plans: list[DayPlan], book: DayBook) -> int:
        """Day after day; each is finalized when its workers end. A stop signal ends the run after
        the day it interrupted."""
        StopSignals(lambda _reason: self.stop(), on_second=self.signal_workers).install()
        rc = 0
        for i, plan in enumerate(plans):
            book.taken(plan, self.name)
            logs = f"{self.config.log_dir.resolve()}/stream_tar_{plan.day}_*_{self.job_id}.out"
            print(f"logs: {logs}", flush=True)
            codes = self.run_day(plan.day, plan.todo)
            complete = book.finish(plan.day).totals.complete
            if self._stopping or EXIT_INTERRUPTED in codes.values():
                # stopped: the days after this one are not started (a rerun resumes them)
                return rc if complete and i == len(plans) - 1 else EXIT_INTERRUPTED
            rc = rc or (0 if complete else 1)
        return rc

    def log_path(self, day: dt.date, archive: DayArchive) -> Path:
        return self.config.log_dir.resolve() / f"stream_tar_{day}_{archive.slot}_{self.job_id}.out"

    def stop(self) -> None:
        """Start nothing new and ask running workers to stop cleanly. Safe from a signal handler."""
        if not self._stopping:
            self._stopping = True
            self.signal_workers()

    def signal_workers(self) -> None:
        """SIGTERM to each running worker: the first asks it to stop, a second makes it exit now."""
        for proc in list(self._running.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run_day(self, day: dt.date, todo: Sequence[DayArchive], poll_s: float = 0.2) -> dict[str, int]:
        """Run the archives, `max_parallel` at a time; returns each started archive's exit status."""
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, int] = {}
        pending = list(todo)
        while pending or self._running:
            while pending and len(self._running) < self.config.max_parallel and not self._stopping:
                archive = pending.pop(0)
                self._running[archive.key.archive] = self._start(day, archive)
            if self._stopping:
                pending.clear()
            for name, proc in list(self._running.items()):
                rc = proc.poll()
                if rc is not None:
                    del self._running[name]
                    results[name] = rc
                    log.info("%s finished with exit status %d", name, rc)
            time.sleep(poll_s)
        return results

    def _start(self, day: dt.date, archive: DayArchive) -> subprocess.Popen[bytes]:
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
            return subprocess.Popen(
                argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

"""Where a run's time and CPU go, by stage: for the logs, `bench`, and sizing a node's cores.

Busy seconds are added from several threads (`Stopwatch`); CPU seconds are charged to a stage by
the thread that spent them (`CpuLedger`), and the rest split by `split_cpu`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


class Stopwatch:
    """Busy or waiting seconds per stage, added from several threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)

    def log(self) -> None:
        with self._lock:
            text = ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.seconds.items()))
        log.info("stage seconds (busy or waiting): %s", text)


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds of this process (all its threads) and of its children that have ended."""

    own: float
    children: float

    @classmethod
    def now(cls) -> CpuTimes:
        t = os.times()
        return cls(t.user + t.system, t.children_user + t.children_system)

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.own - other.own, self.children - other.children)


class CpuLedger(Stopwatch):
    """CPU seconds per stage, for sizing a node: how many cores keep a GPU fed. A stage measured
    in a thread counts that thread's CPU only (`time.thread_time`), so what a library does in
    threads of its own (a BLAS pool) stays with the process's unattributed rest."""

    @contextlib.contextmanager
    def thread(self, stage: str) -> Iterator[None]:
        """Charge the calling thread's CPU time inside the block to `stage`."""
        started = time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.thread_time() - started)


def native_threads_cpu() -> float:
    """CPU seconds so far of this process's threads that Python did not start: CTranslate2's
    compute threads and any library pool (BLAS). Linux only (0 elsewhere); 10 ms resolution."""
    python = {t.native_id for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            if int(tid) in python:
                continue
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


STARTUP = "conversion start-up"  # the conversion processes' imports: once a run, not per member
# The stages a node's cores are spent on, in the order `bench` prints them.
CPU_STAGES = (
    "reader", "conversion", STARTUP, "samples", "vad", "features", "speakers", "outputs", "database",
    "upload", "ctranslate2", "rest",
)  # fmt: skip
# What a GPU takes over: CTranslate2's compute threads (on CPU they decode; on a GPU they mostly
# wait for the device). Not counted when sizing a GPU node's cores.
DECODING = "ctranslate2"


def split_cpu(
    used: CpuTimes, measured: dict[str, float], conversion_tasks_s: float, conversion_processes_s: float
) -> dict[str, float]:
    """A run's CPU seconds by stage. `used`: the process's and its ended children's over the
    run; `measured`: the in-process stages timed in their threads (reader, samples, vad,
    features, speakers, outputs, database) and CTranslate2's threads (ctranslate2); the conversion
    processes' CPU in their tasks and in all (start-up included). What the children used beyond
    the conversion processes is rsync's (upload); what the process used beyond its measured
    stages is the rest (the main and decode threads' own work, the lease's heartbeat)."""
    split = {stage: max(0.0, measured.get(stage, 0.0)) for stage in CPU_STAGES}
    split["conversion"] = conversion_tasks_s
    split[STARTUP] = max(0.0, conversion_processes_s - conversion_tasks_s)
    split["upload"] = max(0.0, used.children - conversion_processes_s)
    in_process = sum(
        split[s] for s in ("reader", "samples", "vad", "features", "speakers", "outputs", "database")
    )
    split[DECODING] = min(max(0.0, measured.get(DECODING, 0.0)), max(0.0, used.own - in_process))
    split["rest"] = max(0.0, used.own - in_process - split[DECODING])
    return split

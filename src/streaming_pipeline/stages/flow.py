"""Plumbing shared by the runs that chain the stages: an archive's worker and process-dataset.

Neither reaches into the other: both import their stopwatch, their hand-off between threads and
the shape of a loaded model from here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .transcript import Transcript

log = logging.getLogger(__name__)


def put_unless_stopped(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    """Hand `item` to the consumer, unless the run stops first (then the consumer is gone and
    the item's work stays pending for the next run)."""
    while True:
        try:
            q.put(item, block=not stop.is_set(), timeout=0.5)  # once stopped, no waiting at all
            return
        except queue.Full:
            if stop.is_set():
                return


class TranscriberLike(Protocol):
    """A loaded model: `transcribe.Transcriber`, or a stand-in with the same surface."""

    model_name: str

    def transcribe(self, audio: Any, *, archive: str, member: str) -> Transcript: ...


class Stopwatch:
    """Busy or waiting seconds per stage, added from several threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

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


class CpuLedger:
    """CPU seconds per stage, for sizing a node: how many cores keep a GPU fed. A stage measured
    in a thread counts that thread's CPU only (`time.thread_time`), so what a library does in
    threads of its own (a BLAS pool) stays with the process's unattributed rest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def thread(self, stage: str) -> Iterator[None]:
        """Charge the calling thread's CPU time inside the block to `stage`."""
        started = time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.thread_time() - started)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)


STARTUP = "conversion start-up"  # the conversion processes' imports: once a run, not per member
# The stages a node's cores are spent on, in the order `bench` prints them.
CPU_STAGES = (
    "reader", "conversion", STARTUP, "reload", "vad", "features", "outputs", "database", "upload",
    "decoder and rest",
)  # fmt: skip


def split_cpu(
    used: CpuTimes, measured: dict[str, float], conversion_tasks_s: float, conversion_processes_s: float
) -> dict[str, float]:
    """A run's CPU seconds by stage. `used`: the process's and its ended children's over the
    run; `measured`: the in-process stages timed in their threads (reader, reload, vad,
    features, outputs, database); the conversion processes' CPU in their tasks and in all (start-up
    included). What the children used beyond the conversion processes is rsync's (upload);
    what the process used beyond its measured stages is the decoder's and everything else's."""
    split = {stage: max(0.0, measured.get(stage, 0.0)) for stage in CPU_STAGES}
    split["conversion"] = conversion_tasks_s
    split[STARTUP] = max(0.0, conversion_processes_s - conversion_tasks_s)
    split["upload"] = max(0.0, used.children - conversion_processes_s)
    in_process = sum(split[s] for s in ("reader", "reload", "vad", "features", "outputs", "database"))
    split["decoder and rest"] = max(0.0, used.own - in_process)
    return split

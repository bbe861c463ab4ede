"""Plumbing shared by the runs that chain the stages: an archive's worker and process-dataset.

Neither reaches into the other: both import their stopwatch, their hand-off between threads and
the shape of a loaded model from here.
"""

from __future__ import annotations

import logging
import queue
import threading
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

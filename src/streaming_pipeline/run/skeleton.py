"""What every run of the pipeline shares, whatever it reads: an archive's worker and
process-dataset.

    StopControl:     the stop request (signal-safe), and the deadline by which a stopping run
                     must be over even when a stage is stuck
    UploadSlots:     how many finished batches may wait in scratch for their upload
    final_state:     how a run ends (done, interrupted, damaged, failed), one rule for both
    RunTally:        the run's counts, busy seconds and errors, written from several threads

The workers describe their own work; the supervised conversion pool (`stages/audio.py`) and the
uploads' grace (`stages/upload.py`) are the other halves of the plumbing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from ..stages.flow import Stopwatch

log = logging.getLogger(__name__)

# A stopping run must be over `grace` seconds after the stop request: its uploads get the grace
# less this much, to end their rsyncs and record the run's state; a run still not over at the
# grace (a stage stuck in C code: a reader in a spinning read, a decoder that never returns,
# which Python cannot interrupt) is recorded by the watchdog and the process exits.
WIND_DOWN_S = 5.0
EXIT_STUCK = 75  # EX_TEMPFAIL: the run was stopped; its work stays for the next one


def final_state(
    *, complete: bool, stop_reason: str | None, damage: str | None, errors: Iterable[str]
) -> tuple[str, str | None]:
    """(state, error) of a run that ended. `complete`: every item was read to the real end of its
    source and has its outcome. A stop request wins (the next run continues where this one
    stopped, whatever went wrong meanwhile); then damage of the source; then any error."""
    reasons = [e for e in dict.fromkeys(errors) if e]
    if complete and not reasons and damage is None:
        return "done", None
    if stop_reason is not None:
        return "interrupted", "; ".join([stop_reason, *reasons])
    if damage is not None:
        return "damaged", "; ".join([damage, *reasons])
    return "failed", "; ".join(reasons) or "stopped before the end of its input"


def limit_requeues(
    state: str, error: str | None, *, restarts: int, max_restarts: int
) -> tuple[str, str | None]:
    """An interrupted run of a job already requeued `max_restarts` times is not requeued again:
    it ends failed (submitit's max_num_timeout), so a worker that a member or a node keeps
    stopping does not loop for ever."""
    if state != "interrupted" or restarts < max_restarts:
        return state, error
    return "failed", f"{error}; requeued {restarts} times already (PIPELINE_MAX_RESTARTS={max_restarts})"


# A member in flight when this many runs died is failed, not tried again.
POISON_RUNS = 2


def poison_members(crashes: dict[str, int]) -> tuple[dict[str, int], set[str]]:
    """(members to fail, with their crashed runs; suspects) from the runs each member was in
    flight for when its worker died. A suspect goes to the decoder alone, so that a second
    death is charged to the member that caused it, not to the ones decoded beside it."""
    poison = {member: runs for member, runs in crashes.items() if runs >= POISON_RUNS}
    return poison, set(crashes) - set(poison)


class StopControl:
    """A run's stop request. `request` only sets flags, so a signal handler may call it. Once a
    stop was requested the run has `grace` seconds: `remaining()` is what its cleanup may
    still spend, and a watchdog ends the process at the grace if the run is not over by then
    (after `on_stuck`, which records what it can)."""

    def __init__(
        self,
        grace: float,
        *,
        exit_now: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.event = threading.Event()  # also set when the run ends, to stop its threads
        self.reason: str | None = None
        self.on_stuck: Callable[[str], None] | None = None
        self._requested_at: float | None = None
        self._wake = threading.Event()
        self._over = threading.Event()
        self._exit_now = exit_now
        self._clock = clock
        self._watchdog: threading.Thread | None = None

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._requested_at = self._clock()
        self.event.set()
        self._wake.set()

    def remaining(self, wind_down: float = WIND_DOWN_S) -> float:
        """Seconds the stopping run's cleanup may still wait, keeping `wind_down` to record its end."""
        if self._requested_at is None:
            return float("inf")
        return max(0.0, self._requested_at + self.grace - wind_down - self._clock())

    def watch(self) -> None:
        """Start the watchdog (once, before the run)."""
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)
            self._watchdog.start()

    def over(self) -> None:
        """The run has recorded its end: nothing is left for the watchdog."""
        self._over.set()
        self._wake.set()

    def _watch(self) -> None:
        self._wake.wait()
        if self._over.wait(self.remaining(wind_down=0.0)):
            return
        reason = f"still stopping {self.grace:.0f}s after {self.reason} (a stage is stuck)"
        os.write(2, f"streaming-pipeline: {reason}: exiting\n".encode())
        if self.on_stuck is not None:
            recorder = threading.Thread(target=self.on_stuck, args=(reason,), daemon=True)
            recorder.start()
            recorder.join(WIND_DOWN_S)
        self._exit_now(EXIT_STUCK)


class UploadSlots:
    """At most `n` finished batches (or shards) in scratch, waiting for or during their upload.
    A stopping run waits for a slot only within its grace: with a destination that hangs, a
    slot may never come free."""

    def __init__(self, n: int, control: StopControl) -> None:
        self._free = threading.BoundedSemaphore(n)
        self._control = control

    def take(self) -> bool:
        """True once a slot is this caller's; False when the stopping run's grace is spent."""
        while not self._free.acquire(timeout=0.5):
            if self._control.requested and self._control.remaining() <= 0:
                return False
        return True

    def give(self) -> None:
        self._free.release()


class RunTally:
    """A run's bookkeeping: counts by outcome, busy seconds by stage, errors, from any thread."""

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(names, 0)
        self._errors: list[str] = []
        self.audio_s = 0.0
        self.timers = Stopwatch()

    def count(self, what: str, n: int = 1, *, audio_s: float = 0.0) -> None:
        with self._lock:
            self._counts[what] += n
            self.audio_s += audio_s

    def error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def __getitem__(self, what: str) -> int:
        with self._lock:
            return self._counts[what]

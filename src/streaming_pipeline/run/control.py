"""How a run is stopped: the signals that ask it to, the grace it then has, and what waits
within that grace.

    StopSignals:  USR1 (Slurm's time-limit warning), TERM and INT ask for a clean stop; a second
                  one exits at once, unless it is the first's echo (submitit keeps its signal
                  handling in a class of its own too)
    StopControl:  the stop request (signal-safe), the grace it starts, and the watchdog that ends
                  a run still not over at the grace (a stage stuck where Python cannot reach)
    UploadSlots:  finished batches waiting in scratch for their upload, waited for within the grace
    result_unless_stopped, wait_unless_stopped: a future waited for, looking at the stop request
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future
from types import FrameType
from typing import TypeVar

T = TypeVar("T")

# How often a wait looks at the stop request (every wait of the run's threads is this long at most).
POLL_S = 0.5

# A stopping run must be over `grace` seconds after the stop request: its uploads get the grace
# less this much, to end their rsyncs and record the run's state; a run still not over at the
# grace (a stage stuck in C code: a reader in a spinning read, a decoder that never returns,
# which Python cannot interrupt) is recorded by the watchdog and the process exits.
WIND_DOWN_S = 5.0
# EX_TEMPFAIL: the run was stopped (by a signal, or by the watchdog); its work stays for the next
# run, which Slurm's requeue or a rerun starts.
EXIT_INTERRUPTED = 75


# `scancel` sends SIGTERM to every process of the job and the batch shell passes its own on to
# the worker (hpc/process_single_tar_streaming.sh): one stop, arriving twice. The same signal again
# within this many seconds is that echo; later, or another signal, is someone insisting.
ECHO_S = 2.0


class StopSignals:
    """Signal handlers that only set flags (no pool shutdown, no locks, no logging inside)."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(
        self,
        stop: Callable[[str], None],
        on_second: Callable[[], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        exit_now: Callable[[int], None] = os._exit,
    ) -> None:
        self._stop = stop
        self._on_second = on_second
        self._clock = clock
        self._exit_now = exit_now
        self._fired: list[tuple[str, float]] = []

    def install(self) -> StopSignals:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = self._clock()
        if self._fired:
            first, at = self._fired[0]
            if name == first and now - at < ECHO_S:
                return  # the same stop, delivered twice
            os.write(2, f"streaming-pipeline: second signal ({name}): exiting now\n".encode())
            if self._on_second is not None:
                self._on_second()
            self._exit_now(128 + signum)
            return
        self._fired.append((name, now))
        os.write(2, f"streaming-pipeline: {name}: finishing in-flight work, then stopping\n".encode())
        self._stop(f"stopped by {name}")


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
        # Run by the watchdog as soon as a stop is requested (not in the signal handler): what
        # the stop means recorded at once, since `scancel` sends SIGKILL after Slurm's KillWait
        # (30 s by default), which may come before the run has finished its in-flight work.
        self.on_request: Callable[[str], None] | None = None
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
        if self.on_request is not None and self.reason is not None and not self._over.is_set():
            threading.Thread(target=self.on_request, args=(self.reason,), daemon=True).start()
        if self._over.wait(self.remaining(wind_down=0.0)):
            return
        reason = f"still stopping {self.grace:.0f}s after {self.reason} (a stage is stuck)"
        os.write(2, f"streaming-pipeline: {reason}: exiting\n".encode())
        if self.on_stuck is not None:
            recorder = threading.Thread(target=self.on_stuck, args=(reason,), daemon=True)
            recorder.start()
            recorder.join(WIND_DOWN_S)
        self._exit_now(EXIT_INTERRUPTED)


class UploadSlots:
    """At most `n` finished batches (or shards) in scratch, waiting for or during their upload.
    A stopping run waits for a slot only within its grace: with a destination that hangs, a
    slot may never come free."""

    def __init__(self, n: int, control: StopControl) -> None:
        self._free = threading.BoundedSemaphore(n)
        self._control = control

    def take(self) -> bool:
        """True once a slot is this caller's; False when the stopping run's grace is spent."""
        while not self._free.acquire(timeout=POLL_S):
            if self._control.requested and self._control.remaining() <= 0:
                return False
        return True

    def give(self) -> None:
        self._free.release()


def result_unless_stopped(future: Future[T], control: StopControl, on_stop: Callable[[], object]) -> T:
    """The future's result; once a stop is requested, `on_stop()` runs at each look (it may
    cancel what the future waits for, or raise to give up)."""
    while True:
        try:
            return future.result(timeout=POLL_S)
        except futures.TimeoutError:
            if control.requested:
                on_stop()


def wait_unless_stopped(pending: Iterable[Future[T]], control: StopControl) -> None:
    """Until every future is done, or a stop is requested."""
    waiting = set(pending)
    while waiting and not control.requested:
        waiting = futures.wait(waiting, timeout=POLL_S).not_done

"""How stop signals are read: the first asks for a clean stop, its echo (the same signal again at
once: `scancel` signals every process of the job and the batch shell passes its own on) is
ignored, and a later or a different one exits at once. The clock and the exit are stand-ins (a
real process's exit would end the test)."""

from __future__ import annotations

import signal
import threading

from streaming_pipeline.run.control import ECHO_S, StopControl, StopSignals
from streaming_pipeline.run.job import requeues


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _signals() -> tuple[StopSignals, list[str], list[int], Clock]:
    stops: list[str] = []
    exits: list[int] = []
    clock = Clock()
    return StopSignals(stops.append, clock=clock, exit_now=exits.append), stops, exits, clock


def test_the_echo_of_a_stop_is_ignored_and_a_later_one_exits() -> None:
    handler, stops, exits, clock = _signals()
    handler._handle(signal.SIGTERM, None)
    clock.now += 0.01
    handler._handle(signal.SIGTERM, None)
    assert stops == ["stopped by SIGTERM"] and exits == []
    clock.now += ECHO_S
    handler._handle(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]


def test_another_signal_after_the_first_exits_at_once() -> None:
    handler, stops, exits, _ = _signals()
    handler._handle(signal.SIGUSR1, None)
    handler._handle(signal.SIGTERM, None)  # Slurm's kill at the time limit, after its warning
    assert stops == ["stopped by SIGUSR1"] and exits == [128 + signal.SIGTERM]


def test_only_the_time_limits_warning_requeues_the_job() -> None:
    assert requeues("stopped by SIGUSR1")
    assert not requeues("stopped by SIGTERM") and not requeues("stopped by SIGINT") and not requeues(None)


def test_a_stop_is_recorded_at_once_by_the_watchdog_not_the_signal_handler() -> None:
    """`on_request` runs in a thread of the watchdog's as soon as the stop is asked for, long
    before the grace ends; a run already over records nothing more."""
    seen: list[tuple[str, str]] = []
    recorded = threading.Event()

    def record(reason: str) -> None:
        seen.append((reason, threading.current_thread().name))
        recorded.set()

    control = StopControl(3600.0, exit_now=lambda code: None)
    control.on_request = record
    control.watch()
    control.request("stopped by SIGTERM")
    assert recorded.wait(10), "recorded at once, not at the grace"
    assert seen[0][0] == "stopped by SIGTERM" and seen[0][1] != threading.main_thread().name
    control.over()

    finished = StopControl(3600.0, exit_now=lambda code: None)
    finished.on_request = record
    finished.watch()
    finished.over()
    finished.request("stopped by SIGTERM")
    assert len(seen) == 1

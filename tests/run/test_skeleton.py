"""The run skeleton's rules, without a database or a model."""

from __future__ import annotations

import threading

from streaming_pipeline.run.control import EXIT_INTERRUPTED, StopControl, UploadSlots
from streaming_pipeline.run.skeleton import Feed, RunTally, final_state, limit_requeues, poison_members


def test_final_state_one_rule_for_every_run() -> None:
    assert final_state(complete=True, stop_reason=None, damage=None, errors=[]) == ("done", None)
    # A stop wins over errors: the next run continues (both workers used to disagree here).
    assert final_state(complete=False, stop_reason="stopped by SIGUSR1", damage=None, errors=["x", "x"]) == (
        "interrupted",
        "stopped by SIGUSR1; x",
    )
    assert final_state(complete=True, stop_reason=None, damage="bad header at offset 512", errors=[]) == (
        "damaged",
        "bad header at offset 512",
    )
    assert final_state(complete=True, stop_reason=None, damage=None, errors=["upload failed"]) == (
        "failed",
        "upload failed",
    )
    assert final_state(complete=False, stop_reason=None, damage=None, errors=[]) == (
        "failed",
        "stopped before the end of its input",
    )


def test_a_job_requeued_max_restarts_times_ends_failed_instead_of_requeueing() -> None:
    assert limit_requeues("interrupted", "stopped by SIGUSR1", restarts=2, max_restarts=3) == (
        "interrupted",
        "stopped by SIGUSR1",
    )
    state, error = limit_requeues("interrupted", "stopped by SIGUSR1", restarts=3, max_restarts=3)
    assert state == "failed" and "requeued 3 times already (PIPELINE_MAX_RESTARTS=3)" in str(error)
    assert limit_requeues("done", None, restarts=9, max_restarts=3) == ("done", None)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_grace_counts_from_the_first_stop_request() -> None:
    clock = _Clock()
    control = StopControl(90.0, clock=clock)
    assert control.remaining() == float("inf") and not control.requested
    control.request("stopped by SIGUSR1")
    clock.now += 30
    control.request("stopped by SIGTERM")  # a second request changes neither reason nor start
    assert control.reason == "stopped by SIGUSR1" and control.event.is_set()
    assert control.remaining() == 55.0  # 90 - 30, less 5 s to record the end
    clock.now += 200
    assert control.remaining() == 0.0


def test_the_watchdog_records_and_exits_when_a_stopping_run_is_stuck() -> None:
    exited = threading.Event()
    codes: list[int] = []
    recorded: list[str] = []
    control = StopControl(0.3, exit_now=lambda code: (codes.append(code), exited.set()))
    control.on_stuck = recorded.append
    control.watch()
    control.request("stopped by SIGTERM")
    assert exited.wait(30)
    assert codes == [EXIT_INTERRUPTED]
    assert recorded == ["still stopping 0s after stopped by SIGTERM (a stage is stuck)"]


def test_the_watchdog_lets_a_run_that_ended_in_time_be() -> None:
    codes: list[int] = []
    control = StopControl(0.5, exit_now=codes.append)
    control.watch()
    control.request("stopped by SIGTERM")
    control.over()
    assert control._watchdog is not None
    control._watchdog.join(10)
    assert not control._watchdog.is_alive() and codes == []


def test_members_in_flight_when_two_runs_died_are_poison_the_others_suspects() -> None:
    poison, suspects = poison_members({"a.wav": 2, "b.wav": 1, "c.wav": 3})
    assert poison == {"a.wav": 2, "c.wav": 3} and suspects == {"b.wav"}
    assert poison_members({}) == ({}, set())


class _Run:
    """What Feed needs of a run: its stop control and its stopwatch."""

    def __init__(self, grace: float = 60.0) -> None:
        self.control = StopControl(grace)
        self.tally = RunTally()


def test_the_feed_hands_over_items_then_none_and_a_readers_error_as_an_item() -> None:
    run = _Run()

    def produce(put) -> None:
        for n in range(3):
            put(n)

    feed = Feed(produce, run, maxsize=1).start()  # type: ignore[arg-type]
    assert [feed.get() for _ in range(4)] == [0, 1, 2, None]
    feed.join()

    def broken(put) -> None:
        put("first")
        raise ValueError("the source broke")

    feed = Feed(broken, _Run(), maxsize=1).start()  # type: ignore[arg-type]
    assert feed.get() == "first"
    error = feed.get()
    assert isinstance(error, ValueError) and str(error) == "the source broke"
    feed.join()


def test_a_stopped_run_ends_its_reader_even_when_nobody_takes_its_items() -> None:
    run = _Run()
    feed = Feed(lambda put: [put(n) for n in range(100)], run, maxsize=1).start()  # type: ignore[arg-type]
    assert feed.get() == 0
    run.control.request("stopped by SIGTERM")
    feed.join()  # it returned: a full queue and a stop do not hold the reader


def test_upload_slots_are_waited_for_only_within_a_stopping_runs_grace() -> None:
    clock = _Clock()
    control = StopControl(10.0, clock=clock)
    slots = UploadSlots(1, control)
    assert slots.take()
    control.request("stopped by SIGUSR1")  # no slot comes free: the destination hangs
    clock.now += 10.0
    assert not slots.take()
    slots.give()
    assert slots.take()

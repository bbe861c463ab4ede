"""The conversion processes: a task whose process dies or hangs fails alone; the pool goes on.

No public audio file reliably crashes libsndfile, so the crashing and hanging tasks here are
stand-ins that kill their own (real, spawned) process with a real signal, or sleep.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from streaming_pipeline.errors import ConversionError
from streaming_pipeline.stages.pool import ConversionPool


def _double(x: int) -> int:
    return 2 * x


def _die(sig: int) -> None:
    os.kill(os.getpid(), sig)


def _hang() -> None:
    time.sleep(3600)


def _fail() -> None:
    raise ConversionError("not audio")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_a_task_whose_process_dies_fails_alone_and_the_slot_gets_a_new_process(sig: int) -> None:
    with ConversionPool(1, timeout=60) as pool:
        before = pool.submit(_double, 1)
        dying = pool.submit(_die, sig)
        after = [pool.submit(_double, n) for n in range(2, 5)]
        assert before.result() == 2
        with pytest.raises(ConversionError, match=f"the conversion process died \\(killed by {sig.name}\\)"):
            dying.result()
        assert [f.result() for f in after] == [4, 6, 8]
        assert pool.replaced == 1


def test_a_hung_task_is_ended_with_its_process_at_the_timeout_and_the_others_go_on() -> None:
    started = time.monotonic()
    with ConversionPool(2, timeout=2) as pool:
        hung = pool.submit(_hang)
        others = [pool.submit(_double, n) for n in range(6)]
        assert [f.result() for f in others] == [0, 2, 4, 6, 8, 10]
        with pytest.raises(ConversionError, match="decoding timed out after 2s"):
            hung.result()
        failed = pool.submit(_fail)
        with pytest.raises(ConversionError, match="not audio"):  # a failure is not a death
            failed.result()
    assert time.monotonic() - started < 60  # not the hour the task asked for
    assert pool.replaced == 1


def test_close_ends_a_running_task_and_cancels_the_queued_ones() -> None:
    pool = ConversionPool(1, timeout=3600)
    running = pool.submit(_hang)
    queued = pool.submit(_double, 1)
    deadline = time.monotonic() + 60
    while not running.running():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pool.close()
    with pytest.raises(ConversionError, match="the run stopped"):
        running.result()
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(_double, 2)


def _spin(cpu_s: float) -> float:
    """Burn `cpu_s` seconds of this process's CPU (not wall time: a loaded machine only delays it)."""
    end = time.process_time() + cpu_s
    while time.process_time() < end:
        pass
    return cpu_s


def test_the_pool_counts_its_tasks_cpu_and_its_processes_start_up_apart() -> None:
    with ConversionPool(2, timeout=60) as pool:
        assert [f.result() for f in [pool.submit(_spin, 0.2) for _ in range(3)]] == [0.2] * 3
        assert 0.6 <= pool.task_cpu_s < 0.9  # three tasks' CPU, from the processes that ran them
        assert pool.process_cpu_s > pool.task_cpu_s  # their imports and warm-up as well

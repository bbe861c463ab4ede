"""What a run's CPU is spent on: the ledger charges a thread's own CPU, the split assigns the
rest by rule (pure: no processes)."""

from __future__ import annotations

import threading
import time

import pytest

from streaming_pipeline.stages.cpu import (
    CPU_STAGES,
    DECODING,
    STARTUP,
    CpuLedger,
    CpuTimes,
    native_threads_cpu,
    split_cpu,
)


def _spin(cpu_s: float) -> None:
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def test_a_stage_is_charged_its_own_threads_cpu_not_the_time_it_waited() -> None:
    ledger = CpuLedger()

    def busy() -> None:
        with ledger.thread("busy"):
            _spin(0.2)

    def idle() -> None:
        with ledger.thread("idle"):
            time.sleep(0.3)  # waits, as a reader blocked on a full queue does

    threads = [threading.Thread(target=busy), threading.Thread(target=idle)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = ledger.snapshot()
    assert 0.2 <= seconds["busy"] < 0.5
    assert seconds["idle"] < 0.05


def test_the_split_gives_children_beyond_the_conversion_processes_to_upload_and_the_rest_to_the_decoder() -> (
    None
):
    used = CpuTimes(own=10.0, children=7.0)
    measured = {"reader": 1.0, "samples": 0.5, "vad": 1.5, "features": 1.5, "outputs": 0.25, "database": 0.25}
    split = split_cpu(used, {**measured, DECODING: 3.0}, conversion_tasks_s=4.0, conversion_processes_s=5.5)
    assert list(split) == list(CPU_STAGES)
    assert split["conversion"] == 4.0 and split[STARTUP] == 1.5
    assert split["upload"] == pytest.approx(1.5)  # 7.0 of the children, less 5.5 of conversion
    assert split[DECODING] == 3.0
    assert split["rest"] == pytest.approx(2.0)  # 10.0 less the 5.0 measured in Python threads and 3.0 native
    assert sum(split.values()) == pytest.approx(used.own + used.children)
    # Measured by other clocks, the parts can exceed the whole a little: never a negative stage.
    assert min(split_cpu(CpuTimes(1.0, 0.5), measured, 0.4, 0.6).values()) >= 0.0


def test_a_python_threads_cpu_is_not_counted_as_native() -> None:
    """(CTranslate2's compute threads are: tests/tools/test_bench.py sees them decode.)"""
    before = native_threads_cpu()
    spun, release = threading.Event(), threading.Event()

    def busy() -> None:
        _spin(0.3)
        spun.set()
        release.wait()

    thread = threading.Thread(target=busy)
    thread.start()
    spun.wait()
    try:
        assert native_threads_cpu() - before < 0.1  # measured while the busy thread is alive
    finally:
        release.set()
        thread.join()

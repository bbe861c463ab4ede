"""Conversion processes that one bad member cannot take down with it.

concurrent.futures' ProcessPoolExecutor fails every pending task when one of its processes dies
(a decoder library's segfault, the kernel's OOM killer), cannot end a task that hangs, and its
shutdown waits for a hung task for ever. Here each process is driven by a thread of its own that
knows which task it holds: a task whose process dies fails alone with the signal named, a task
past its timeout has its process killed, and either way a fresh process takes the slot while
the other slots go on.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..errors import ConversionError
from .audio import exit_with_parent, warm_up

log = logging.getLogger(__name__)

_POLL_S = 0.2
STOPPED = "stopped with the run"


def _serve(conn: Connection, parent_pid: int) -> None:
    """A conversion process: run the tasks it is sent, one at a time, until told to stop."""
    exit_with_parent(parent_pid)
    warm_up()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        fn, args, kwargs = task
        started = time.process_time()
        try:
            outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
        except ConversionError as exc:
            outcome = (False, exc)
        except Exception as exc:  # noqa: BLE001 - any failure fails its member, with its reason
            outcome = (False, ConversionError(f"{type(exc).__name__}: {exc}"))
        ended = time.process_time()  # the task's CPU, and the process's so far (start-up included)
        conn.send((*outcome, ended - started, ended))


def _death(process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class _Task:
    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.future: Future[Any] = Future()


class ConversionPool:
    """`workers` processes (spawned: the parent has threads and database connections), each
    running one task at a time; a task that runs past `timeout` seconds is ended with its
    process and fails with ConversionError, as does one whose process dies."""

    def __init__(self, workers: int, *, timeout: float) -> None:
        self.timeout = timeout
        self.replaced = 0  # processes ended by a death or a timeout (and replaced)
        self.task_cpu_s = 0.0  # CPU seconds the tasks took, summed over the processes
        self.receive_cpu_s = 0.0  # CPU seconds this process spent taking their answers in
        self._process_cpu: dict[int, float] = {}  # pid -> its CPU seconds at its last answer
        self._context = multiprocessing.get_context("spawn")
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._slots = [
            threading.Thread(target=self._slot, name=f"convert-{i}", daemon=True) for i in range(workers)
        ]
        for slot in self._slots:
            slot.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._closing.is_set():
            raise RuntimeError("the conversion pool is closed")
        task = _Task(fn, args, kwargs)
        self._tasks.put(task)
        return task.future

    @property
    def process_cpu_s(self) -> float:
        """CPU seconds of the pool's processes as of their last answers (start-up included)."""
        with self._lock:
            return sum(self._process_cpu.values())

    def close(self) -> None:
        """Cancel what has not started and end every process now (running tasks fail)."""
        self._closing.set()
        for _ in self._slots:
            self._tasks.put(None)
        for slot in self._slots:
            slot.join()
        while True:  # what a slot left when its process went with the run
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            if task is not None:
                task.future.cancel()

    def __enter__(self) -> ConversionPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- one slot: a thread and the process it drives --------------------------------------
    def _start(self) -> tuple[BaseProcess, Connection]:
        mine, theirs = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(theirs, os.getpid()), daemon=True)
        process.start()
        theirs.close()
        return process, mine

    def _slot(self) -> None:
        process, conn = self._start()
        try:
            while (task := self._tasks.get()) is not None:
                if self._closing.is_set():
                    task.future.cancel()
                if not task.future.set_running_or_notify_cancel():
                    continue
                failure = self._run(task, process, conn)
                if failure is None:
                    continue
                if failure != STOPPED:
                    with self._lock:
                        self.replaced += 1
                _end(process, wait=0.0)  # gone, or must go: a fresh process takes the slot
                conn.close()
                if self._closing.is_set():
                    return
                log.warning("conversion process %s; starting another", failure)
                process, conn = self._start()
        finally:
            if not conn.closed:
                with contextlib.suppress(OSError, ValueError):
                    conn.send(None)
                _end(process, wait=1.0)
                conn.close()

    def _run(self, task: _Task, process: BaseProcess, conn: Connection) -> str | None:
        """Run `task` in `process`; why the process must be replaced, or None."""
        try:
            conn.send((task.fn, task.args, task.kwargs))
        except (OSError, ValueError) as exc:
            task.future.set_exception(ConversionError(f"the conversion process is gone ({exc})"))
            return "could not take a task"
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if conn.poll(_POLL_S):
                    received = time.thread_time()
                    ok, value, task_cpu, process_cpu = conn.recv()
                    with self._lock:
                        self.receive_cpu_s += time.thread_time() - received
                        self.task_cpu_s += task_cpu
                        self._process_cpu[process.pid or 0] = process_cpu
                    if ok:
                        task.future.set_result(value)
                    else:
                        task.future.set_exception(value)
                    return None
            except (EOFError, OSError):
                pass  # it died while answering: below
            if not process.is_alive():
                process.join(1.0)
                death = _death(process)
                task.future.set_exception(ConversionError(f"the conversion process died ({death})"))
                return f"died ({death})"
            if self._closing.is_set():
                task.future.set_exception(ConversionError("the run stopped during the conversion"))
                return STOPPED
            if time.monotonic() >= deadline:
                task.future.set_exception(
                    ConversionError(f"decoding timed out after {self.timeout:.0f}s (its process was ended)")
                )
                return f"ended after {self.timeout:.0f}s on one member"


def _end(process: BaseProcess, wait: float) -> None:
    """Let it exit for `wait` seconds, then SIGKILL it."""
    process.join(wait)
    if process.is_alive():
        process.kill()
        process.join(5.0)

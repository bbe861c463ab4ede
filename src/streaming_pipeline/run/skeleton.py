"""What every worker is made of, written once: the archive's (`worker.py`), re-transcription's
(`retranscribe.py`) and process-dataset's (`dataset.py`) runs describe their own work on top of
it, and the lifecycle (`engine.py`) runs that work.

    StagedRun:       the stop control, the stages' supervised ends (decoder, uploads within the
                     grace), the watchdog's last word, the outcome
    Feed:            the reader thread's hand-over to the main thread
    RunTally:        the run's counts, busy seconds and errors, written from several threads
    final_state:     how a run ends (done, interrupted, damaged, failed), one rule for all
    limit_requeues:  an interrupted job requeued too often ends failed
    poison_members:  members in flight when earlier runs died, to fail or to decode alone

How a stop reaches the run, and the grace it then has, is `control.py`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

from ..config import PipelineConfig
from ..destination import Destination
from ..stages.asr.protocol import Decoder
from ..stages.cpu import CpuLedger, Stopwatch
from ..stages.upload import Uploads
from ..state.lease import upload_gate
from ..state.states import ArchiveState
from ..state.store import ProgressStore
from ..transcript import Transcript
from .control import POLL_S, StopControl, result_unless_stopped

log = logging.getLogger(__name__)

T = TypeVar("T")


def put_unless_stopped(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Hand `item` to the consumer, unless the run stops first (then the consumer is gone and
    the item's work stays pending for the next run): False."""
    while True:
        try:
            q.put(item, block=not stop.is_set(), timeout=POLL_S)  # once stopped, no waiting at all
            return True
        except queue.Full:
            if stop.is_set():
                return False


def final_state(
    *, complete: bool, stop_reason: str | None, damage: str | None, errors: Iterable[str]
) -> tuple[ArchiveState, str | None]:
    """(state, error) of a run that ended. `complete`: every item was read to the real end of its
    source and has its outcome. A stop request wins (the next run continues where this one
    stopped, whatever went wrong meanwhile); then damage of the source; then any error."""
    reasons = [e for e in dict.fromkeys(errors) if e]
    if complete and not reasons and damage is None:
        return ArchiveState.DONE, None
    if stop_reason is not None:
        return ArchiveState.INTERRUPTED, "; ".join([stop_reason, *reasons])
    if damage is not None:
        return ArchiveState.DAMAGED, "; ".join([damage, *reasons])
    return ArchiveState.FAILED, "; ".join(reasons) or "stopped before the end of its input"


def limit_requeues(
    state: ArchiveState, error: str | None, *, restarts: int, max_restarts: int
) -> tuple[ArchiveState, str | None]:
    """An interrupted run of a job already requeued `max_restarts` times is not requeued again:
    it ends failed (submitit's max_num_timeout), so a worker that a member or a node keeps
    stopping does not loop for ever."""
    if state != ArchiveState.INTERRUPTED or restarts < max_restarts:
        return state, error
    return (
        ArchiveState.FAILED,
        f"{error}; requeued {restarts} times already (PIPELINE_MAX_RESTARTS={max_restarts})",
    )


# A member in flight when this many runs died is failed, not tried again.
POISON_RUNS = 2


def poison_members(crashes: dict[str, int]) -> tuple[dict[str, int], set[str]]:
    """(members to fail, with their crashed runs; suspects) from the runs each member was in
    flight for when its worker died. A suspect goes to the decoder alone, so that a second
    death is charged to the member that caused it, not to the ones decoded beside it."""
    poison = {member: runs for member, runs in crashes.items() if runs >= POISON_RUNS}
    return poison, set(crashes) - set(poison)


class RunTally:
    """A run's bookkeeping: counts by outcome, audio done, busy seconds by stage and errors,
    written from the reader, main, finisher and upload threads."""

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(names, 0)
        self._errors: list[str] = []
        self.audio_s = 0.0
        # (monotonic time, audio done so far) each time audio was done: how fast the run went
        # once it was full, its start-up left out (`bench`'s feed ceiling).
        self.progress: list[tuple[float, float]] = []
        self.timers = Stopwatch()
        self.cpu = CpuLedger()

    def count(self, what: str, n: int = 1, *, audio_s: float = 0.0) -> None:
        with self._lock:
            self._counts[what] += n
            self.audio_s += audio_s
            if audio_s:
                self.progress.append((time.monotonic(), self.audio_s))

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


class RunResult(Protocol):
    """What every worker's run returns (WorkerResult, RetranscribeResult, DatasetResult)."""

    @property
    def ok(self) -> bool: ...
    @property
    def interrupted(self) -> bool: ...
    def summary_line(self) -> str: ...


class EndedIn:
    """A run's result named by the state it ended in (an archive's run, a dataset's)."""

    state: str

    @property
    def ok(self) -> bool:
        return self.state == ArchiveState.DONE

    @property
    def interrupted(self) -> bool:
        return self.state == ArchiveState.INTERRUPTED


class StagedRun:
    """One run that feeds the stages: what the archive worker and the dataset worker share. A
    subclass reads its source, hands work to the conversion processes and the decoder and
    uploads the results; this class owns how the run stops (`control`), how its uploads end
    (within the grace once a stop was requested: the rsyncs still running are ended, the rest
    withdrawn), what the watchdog records when a stage is stuck, and the rule that names the
    outcome."""

    def __init__(self, config: PipelineConfig, store: ProgressStore, tally: RunTally) -> None:
        self.config = config
        self.store = store
        self.tally = tally
        self.destination = Destination.parse(config.remote)
        self.control = StopControl(config.stop_grace)
        self.uploader: Uploads | None = None

    def request_stop(self, reason: str) -> None:
        """Stop taking new work; upload what is done within the grace; leave the rest for the
        next run. Only sets flags: safe from a signal handler."""
        self.control.request(reason)

    def record_stuck(self, reason: str) -> None:
        """The watchdog's last word when the run is not over at the grace: no rsync of this run
        outlives it (each runs in a process group of its own), and the run is interrupted."""
        if self.uploader is not None:
            self.uploader.abort(reason)
        self.record_interrupted(reason)

    def run(self) -> RunResult:
        """The whole run, in the caller's thread (the run's main thread)."""
        raise NotImplementedError

    def record_interrupted(self, reason: str) -> None:
        raise NotImplementedError

    def record_stopping(self, reason: str) -> None:
        """The watchdog thread's, as soon as a stop is requested: what a SIGKILL before the run's
        end would otherwise leave unsaid (nothing, unless a run says otherwise)."""

    def open_uploads(self, *, max_concurrent: int | None = None) -> Uploads:
        """The run's uploader; its gate withdraws every rsync once the lease is another's."""
        self.uploader = Uploads.of(
            self.config.destination, max_concurrent=max_concurrent, gate=upload_gate(self.store)
        )
        return self.uploader

    def transcript(self, future: Future[Transcript], decoder: Decoder) -> Transcript:
        """A member's transcript; a stop request cancels what the decoder has not finished."""
        t0 = time.monotonic()
        try:
            return result_unless_stopped(future, self.control, decoder.cancel_pending)
        finally:
            self.tally.timers.add("wait_for_transcript", time.monotonic() - t0)

    def close_decoder(self, decoder: Decoder) -> None:
        decoder.close()
        stats = decoder.stats()
        self.tally.timers.add("transcribe", stats.decoder_busy_s)
        self.tally.cpu.add("vad", stats.vad_cpu_s)  # the batched decoder's; 0 for per-member decoding
        self.tally.cpu.add("features", stats.features_cpu_s)
        log.info("decoder: %s", ", ".join(f"{k} {v:.4g}" for k, v in sorted(stats.as_dict().items())))

    def end_uploads(self, patience: float | None) -> bool:
        """Wait for the queued uploads (`patience` seconds; None: as long as they take). A
        stopping run waits only within its grace, then ends the rsyncs still running and
        withdraws the rest: what they carried is redone by the next run (rsync is idempotent).
        False, with the error in the tally, when uploads were ended."""
        assert self.uploader is not None
        if self.control.requested:
            patience = self.control.remaining()
        ended = self.uploader.wait(timeout=patience)
        if not ended:
            late = (
                f"uploads still running at the end of the {self.control.grace:.0f}s grace"
                if self.control.requested
                else f"uploads still running after {patience:.0f}s"
            )
            self.tally.error(late)
            self.uploader.abort(late)
        return ended

    def outcome(self, *, complete: bool, damage: str | None = None) -> tuple[ArchiveState, str | None]:
        return final_state(
            complete=complete, stop_reason=self.control.reason, damage=damage, errors=self.tally.errors()
        )


class Feed(Generic[T]):
    """The reader thread's hand-over to the main thread, through a bounded queue. `produce(put)`
    runs in the thread; what it raises is handed over as an item (the main thread decides what
    it means), and None follows its last item, or a stop. `on_drop(item)` (reader thread) gets
    what could not be handed over because the run was stopping."""

    def __init__(
        self,
        produce: Callable[[Callable[[T], None]], None],
        run: StagedRun,
        *,
        maxsize: int,
        on_drop: Callable[[T | BaseException | None], None] | None = None,
    ) -> None:
        self._produce = produce
        self._on_drop = on_drop
        self._run_control = run.control
        self._timers = run.tally.timers
        self._queue: queue.Queue[T | BaseException | None] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._read, name="reader", daemon=True)

    def start(self) -> Feed[T]:
        self._thread.start()
        return self

    def put(self, item: T | BaseException | None) -> None:
        """To the main thread, unless the run stops first (then the item's work stays pending)."""
        if not put_unless_stopped(self._queue, item, self._run_control.event) and self._on_drop:
            self._on_drop(item)

    def get(self) -> T | BaseException | None:
        started = time.monotonic()
        try:
            return self._queue.get()
        finally:
            self._timers.add("wait_for_input", time.monotonic() - started)

    def join(self) -> None:
        self._thread.join()

    def drain(self) -> list[T | BaseException]:
        """What the reader handed over that nobody took (once it has ended)."""
        left: list[T | BaseException] = []
        while True:
            try:
                got = self._queue.get_nowait()
            except queue.Empty:
                return left
            if got is not None:
                left.append(got)

    def _read(self) -> None:
        try:
            self._produce(self.put)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which decides
            self.put(exc)
            return
        self.put(None)

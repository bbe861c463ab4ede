"""The member lifecycle, written once: convert -> decode -> stage -> upload -> record.

    reader thread:    `work.produce` puts items, and a `BatchEnd` after each batch's last item
    main thread:      `work.submit` hands each item to the decoder (or settles it itself)
    finisher thread:  collects each item's transcript in order (`work.finish`); at a batch's end
                      `work.close` records the batch and names its upload
    upload threads:   rsync; then the upload's `on_finish` records what it carried

`Lifecycle` owns the threads, the bounded queues between them and how a stop reaches each; a
worker supplies only what differs (datatrove's executor runs every step's `run` the same way):
where items come from, what an item's output is and how a batch is recorded. What a stop leaves:
items the main thread had not handed over go back to the work (`work.leave`); the finisher
closes the open batch (`work.close(None)`) and its upload still runs within the grace.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from ..errors import TranscriptionError
from ..stages.asr.protocol import Decoder
from ..stages.upload import UploadJob
from ..transcript import Transcript
from .control import POLL_S, UploadSlots
from .skeleton import Feed, StagedRun

I = TypeVar("I")  # noqa: E741 - an item of the work
B = TypeVar("B")  # the work's description of a batch

# Finished batches (or shards) that may sit in scratch waiting for, or during, their upload.
MAX_BATCHES_UPLOADING = 2

# What the decoder made of an item: its transcript, its failure, CancelledError when the run
# stopped first, or None when `submit` settled the item itself (failed before the decoder, or
# needing no decoding).
Outcome = Transcript | TranscriptionError | CancelledError | None


@dataclass(frozen=True)
class BatchEnd(Generic[B]):
    """Every item of the batch `value` describes was put before this."""

    value: B


@dataclass(frozen=True)
class Upload:
    """A closed batch's files: the folder `stage` (the destination's tree), or the one file
    `file` = (local path, path on the destination) staged through it. `on_finish(job)` runs in an
    upload thread once rsync ended; `on_finish(None)` when a stopping run had no upload slot
    within its grace, so nothing went up."""

    stage: Path
    label: str
    on_finish: Callable[[UploadJob | None], None]
    file: tuple[Path, str] | None = None


class Work(Protocol[I, B]):
    """What a worker supplies to the lifecycle; each method names the thread that calls it."""

    def produce(self, put: Callable[[I | BatchEnd[B]], None]) -> None:
        """Reader thread: the items in order, a BatchEnd after each batch's last one."""
        ...

    def submit(self, item: I, decoder: Decoder) -> Future[Transcript] | None:
        """Main thread: hand the item to the decoder; None when the work settled it itself.
        CancelledError: the run stopped while the item was being prepared."""
        ...

    def leave(self, item: I) -> None:
        """Main thread: the run stops before the item was handed over; it stays for the next run."""
        ...

    def finish(self, item: I, outcome: Outcome) -> None:
        """Finisher thread, in the items' order: the item's output, from its outcome."""
        ...

    def close(self, end: BatchEnd[B] | None) -> Upload | None:
        """Finisher thread: record the batch the items since the last end made; None for `end`
        when the run ends inside a batch. The batch's upload, if it has files."""
        ...


@dataclass(frozen=True)
class _Handed(Generic[I]):
    item: I
    future: Future[Transcript] | None


class Lifecycle(Generic[I, B]):
    """One run of `work` through `run`'s stages. The caller's thread is the main thread;
    `hand_ahead` bounds the items handed over that the finisher has not collected, `read_ahead`
    the items read that the main thread has not taken."""

    def __init__(
        self, run: StagedRun, work: Work[I, B], decoder: Decoder, *, read_ahead: int, hand_ahead: int
    ) -> None:
        self.run = run
        self.work = work
        self.decoder = decoder
        self._left_any = False  # an item went back to the work, or the stop cancelled its decoding
        self._feed: Feed[I | BatchEnd[B]] = Feed(work.produce, run, maxsize=read_ahead, on_drop=self._dropped)
        self._handed: queue.Queue[_Handed[I] | BatchEnd[B] | None] = queue.Queue(maxsize=hand_ahead)
        self._slots = UploadSlots(MAX_BATCHES_UPLOADING, run.control)
        self._finisher = threading.Thread(target=self._finish_all, name="finisher", daemon=True)
        self._finisher_error: BaseException | None = None

    def run_all(self) -> bool:
        """The main thread's loop; True when every item was read and has its outcome, none left
        for the next run (the run is complete if nothing failed). Raises what the reader or the
        finisher raised."""
        control = self.run.control
        read_all = False
        self._feed.start()
        self._finisher.start()
        try:
            while (got := self._feed.get()) is not None:
                if isinstance(got, BaseException):
                    raise got
                if control.event.is_set():
                    self._left(got)
                    break
                if isinstance(got, BatchEnd):
                    self._hand(got)
                    continue
                try:
                    future = self.work.submit(got, self.decoder)
                except CancelledError:
                    self._left(got)
                    continue
                self._hand(_Handed(got, future))
            else:
                read_all = not control.event.is_set()
        finally:
            control.event.set()  # the reader stops
            self._feed.join()
            for left in self._feed.drain():
                self._left(left)
            self._hand(None)
            self._finisher.join()
        if self._finisher_error is not None:
            raise self._finisher_error
        return read_all and not self._left_any

    def _left(self, got: I | BatchEnd[B] | BaseException) -> None:
        if not isinstance(got, BatchEnd | BaseException):
            self._left_any = True
            self.work.leave(got)

    def _dropped(self, got: I | BatchEnd[B] | BaseException | None) -> None:
        """Reader thread: what it read once the run was stopping goes back to the work."""
        if got is not None:
            self._left(got)

    def _hand(self, handed: _Handed[I] | BatchEnd[B] | None) -> None:
        """To the finisher, unless it has died (its error ends the run)."""
        while self._finisher.is_alive():
            try:
                self._handed.put(handed, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _finish_all(self) -> None:
        """The finisher thread."""
        try:
            while (handed := self._handed.get()) is not None:
                if isinstance(handed, BatchEnd):
                    self._upload(self.work.close(handed))
                else:
                    self.work.finish(handed.item, self._outcome(handed.future))
            self._upload(self.work.close(None))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises
            self._finisher_error = exc
            self.run.control.event.set()
            self.decoder.cancel_pending()

    def _outcome(self, future: Future[Transcript] | None) -> Outcome:
        if future is None:
            return None
        try:
            return self.run.transcript(future, self.decoder)
        except TranscriptionError as exc:
            return exc
        except CancelledError as exc:
            self._left_any = True
            return exc

    def _upload(self, upload: Upload | None) -> None:
        """Queue the upload once a slot is free: at most MAX_BATCHES_UPLOADING batches in scratch."""
        if upload is None:
            return
        t0 = time.monotonic()
        taken = self._slots.take()
        self.run.tally.timers.add("wait_for_upload_slot", time.monotonic() - t0)
        if not taken:  # stopping, and no upload ended within the grace: the next run redoes it
            upload.on_finish(None)
            return

        def finished(job: UploadJob) -> None:
            try:
                upload.on_finish(job)
            finally:
                self._slots.give()

        uploader = self.run.uploader
        assert uploader is not None, "the run opens its uploads before its lifecycle"
        if upload.file is not None:
            uploader.submit_file(upload.file[0], upload.file[1], upload.stage, upload.label, finished)
        else:
            uploader.submit(upload.stage, upload.label, finished)

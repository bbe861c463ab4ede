"""An archive's members as the lifecycle's work (`engine.py`): what differs for an archive.

    reader thread:   extract a batch member by member, each handed to the conversion pool at
                     once; rejected members recorded; then the batch's conversions in order
    main thread:     wait for each conversion, hand its samples to the decoder
    finisher thread: stage each transcribed member's FLAC, JSON and subtitles; at the batch's
                     end record its members (`uploading`) and name the batch's upload
    upload thread:   mark the batch's members done once rsync confirmed, or failed

A member is `done` only after rsync confirmed its upload. The reader works about one batch
ahead of the main thread (the lifecycle's `read_ahead`), so memory and scratch stay bounded.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArchiveError, ConversionError, PipelineError, StoreError
from ..stages.archive import ArchiveReader, Batch, Member
from ..stages.asr.options import Timestamps
from ..stages.asr.protocol import Decoder
from ..stages.audio import AudioInfo, take_samples
from ..stages.outputs import remove_staged, write_beside
from ..stages.pool import ConversionPool
from ..stages.upload import UploadJob, UploadState
from ..state.records import MemberRecord, StageTiming
from ..state.states import MemberStatus
from ..state.store import ProgressStore
from ..transcript import Transcript
from .control import result_unless_stopped, wait_unless_stopped
from .engine import BatchEnd, Outcome, Upload
from .gpu import GpuSampler
from .skeleton import RunTally

if TYPE_CHECKING:  # the worker that runs this work, as RetranscribeWork takes its own
    from .worker import ArchiveWorker

log = logging.getLogger(__name__)


@dataclass
class Conversion:
    """A member extracted and being converted (reader thread), and what the main thread learnt
    of it before the decoder had it."""

    member: Member
    batch: Batch
    flac: Path  # where the pool writes it
    staged: Path  # where it waits for upload once transcribed, beside its JSON
    future: Future[AudioInfo]
    extracted_at: float  # unix time its batch's extraction started
    info: AudioInfo | None = None
    converted_at: float | None = None
    submitted_at: float | None = None  # unix time it went to the decoder
    failed: MemberRecord | None = None  # failed before the decoder


@dataclass
class _OpenBatch:
    """The batch the finisher is collecting (finisher thread only)."""

    batch: Batch
    conversions: list[Conversion] = field(default_factory=list)
    records: list[MemberRecord] = field(default_factory=list)
    left: list[Conversion] = field(default_factory=list)
    audio_s: float = 0.0


class ArchiveTally(RunTally):
    """The run's bookkeeping, plus what an archive's run also records: each batch's stage
    timings (written once the batch is uploaded) and the GPU's samples."""

    def __init__(self) -> None:
        # left: members a stop left for the next run (no row yet, so the database cannot tell)
        super().__init__("done", "failed", "rejected", "skipped", "left")
        self.gpu = GpuSampler("cpu")  # samples only on CUDA, from when the model is loaded
        self._timings: dict[int, list[StageTiming]] = {}  # batch -> stages timed so far
        self._timings_lock = threading.Lock()

    def timed(
        self, batch: int, stage: str, started: float, ended: float | None = None, **figures: Any
    ) -> None:
        """`stage` of `batch` ran from `started` until `ended` (unix times; now by default)."""
        timing = StageTiming(batch, stage, started, ended or time.time(), **figures)
        with self._timings_lock:
            self._timings.setdefault(batch, []).append(timing)

    def flush_timings(self, store: ProgressStore, run_id: int | None, batch: int) -> None:
        """The batch's stage timings to PostgreSQL in one statement; never fails the run."""
        with self._timings_lock:
            timings = self._timings.pop(batch, [])
        if run_id is None or not timings:
            return
        try:
            store.archives.record_stages(run_id, timings)
        except StoreError as exc:
            log.warning("stage timings of batch %d not recorded: %s", batch, exc)

    def flush_gpu(self, store: ProgressStore, run_id: int | None) -> None:
        samples = self.gpu.take()
        if run_id is None or not samples:
            return
        try:
            store.archives.record_gpu_samples(run_id, samples)
        except StoreError as exc:
            log.warning("%d GPU samples not recorded: %s", len(samples), exc)


class ArchiveWork:
    """An archive's members through the lifecycle; each method names the thread that runs it."""

    def __init__(
        self, worker: ArchiveWorker, pool: ConversionPool, *, skip: Callable[[str], bool], suspects: set[str]
    ) -> None:
        self.worker = worker  # the run: its settings, store, stop control, destination, uploader
        self.tally = worker.tally
        self.store: ProgressStore = worker.store
        self.key = worker.key
        self.pool = pool
        self.damage: str | None = None  # the archive's stream ended damaged (reader thread)
        config = worker.config
        self.reader = ArchiveReader(
            worker.archive_path,
            worker.job_scratch,
            batch_size=config.stream_batch_size,
            max_member_bytes=config.max_member_bytes,
            max_members=config.max_members,
            is_done=skip,
            on_extracted=self._convert,
        )
        self._converting: list[Conversion] = []  # the batch being read (reader thread)
        self._extracted_at = 0.0  # when the batch being read started (reader thread)
        self._suspects = suspects  # in flight when an earlier run died: decoded alone
        self._decoding: dict[str, Future[Transcript]] = {}  # handed to the decoder (main thread)
        self._settled_batch = -1  # the batch whose first member settled the decoding (main thread)
        self._open: _OpenBatch | None = None  # finisher thread

    # -- reader thread ----------------------------------------------------------------------
    def produce(self, put: Callable[[Conversion | BatchEnd[Batch]], None]) -> None:
        """Batch after batch, each member as soon as its conversion started; the damage of a
        stream that breaks off is recorded (what was read before it still goes through)."""
        batches = self.reader.batches()
        while not self.worker.control.event.is_set():
            t0 = time.monotonic()
            self._extracted_at = time.time()
            try:
                with self.tally.cpu.thread("reader"):
                    batch = next(batches, None)
            except ArchiveError as exc:
                self.damage = str(exc)
                log.error("%s", exc)
                return
            finally:
                self.tally.timers.add("extract", time.monotonic() - t0)
            if batch is None:
                return
            self._extracted(batch)
            conversions, self._converting = self._converting, []
            for conversion in conversions:
                put(conversion)
            put(BatchEnd(batch))

    def _convert(self, member: Member, batch: Batch) -> None:
        """The reader's callback for each member extracted: its conversion starts at once."""
        assert member.path is not None
        stage_root = batch.directory / "stage"
        staged = stage_root / self.output_path(member)
        if not staged.resolve().is_relative_to(stage_root.resolve()):
            raise PipelineError(f"refusing to write outside scratch for {member.name!r}")
        flac = batch.directory / "converted" / f"{member.index:08d}.flac"
        future = self.pool.submit(
            self.worker.converter, str(member.path), str(flac), remove_source=True, keep_samples=True
        )
        self._converting.append(Conversion(member, batch, flac, staged, future, self._extracted_at))

    def _extracted(self, batch: Batch) -> None:
        members = len(batch.members) + len(batch.rejected) + batch.skipped
        self.tally.timed(
            batch.number,
            "extract",
            self._extracted_at,
            members=members,
            bytes_read=batch.compressed_bytes_read,
        )
        for m in batch.rejected:
            log.warning("rejected member %r: %s", m.name, m.reject_reason)
        if batch.rejected:
            self.tally.count("rejected", len(batch.rejected))
            rejected = [
                MemberRecord(
                    m.name,
                    MemberStatus.REJECTED,
                    size_bytes=m.size,
                    error=m.reject_reason,
                    full_name=m.full_name,
                )
                for m in batch.rejected
            ]
            self.store.members.record(self.key, rejected)
        self.tally.count("skipped", batch.skipped)

    # -- main thread ------------------------------------------------------------------------
    def submit(self, conversion: Conversion, decoder: Decoder) -> Future[Transcript] | None:
        """The member's samples to the decoder once converted; a suspect goes alone."""
        if conversion.batch.number != self._settled_batch:
            self._settled_batch = conversion.batch.number
            self.settle_decoding(wait=False)
        member = conversion.member
        t0 = time.monotonic()
        try:
            info = self._converted(conversion.future)
        except ConversionError as exc:  # a failure, its process's death or its timeout
            if member.path is not None:
                member.path.unlink(missing_ok=True)
            conversion.failed = self.failed(member, str(exc))
            return None
        finally:
            self.tally.timers.add("convert_wait", time.monotonic() - t0)
            conversion.converted_at = time.time()
        self.tally.timers.add("convert", info.convert_s)
        t1 = time.monotonic()
        conversion.submitted_at = time.time()
        suspect = member.name in self._suspects
        if suspect:  # alone with the decoder: a death now is this member's
            self.settle_decoding()
        self.store.members.mark_in_flight(self.key.archive, [member.name])
        with self.tally.cpu.thread("samples"):  # the decoder's float32, from the kept 16-bit
            conversion.info, audio = take_samples(info, conversion.flac)
        future = decoder.submit(audio, archive=self.key.archive, member=member.name)
        del audio
        self._decoding[member.name] = future
        if suspect:
            self.settle_decoding()
        self.tally.timers.add("wait_for_decoder", time.monotonic() - t1)
        return future

    def leave(self, conversion: Conversion) -> None:
        """Main thread (or the reader's, for what it read once stopping): not started, the
        conversion is cancelled; a running one's output goes with the job's scratch."""
        conversion.future.cancel()
        self.tally.count("left", 1)

    def _converted(self, future: Future[AudioInfo]) -> AudioInfo:
        """The conversion's outcome (the pool ends one past --decode-timeout); CancelledError
        when the run is asked to stop first."""

        def give_up() -> None:
            future.cancel()
            raise CancelledError

        return result_unless_stopped(future, self.worker.control, give_up)

    def settle_decoding(self, *, wait: bool = True) -> None:
        """Say which members handed to the decoder are back (a death now is not theirs); with
        `wait`, first wait until all are (or the run stops)."""
        pending = list(self._decoding.items())
        if wait:
            wait_unless_stopped([f for _, f in pending], self.worker.control)
        back = [m for m, f in pending if f.done()]
        for member in back:
            del self._decoding[member]
        self.store.members.clear_in_flight(self.key.archive, back)

    # -- finisher thread --------------------------------------------------------------------
    def finish(self, conversion: Conversion, outcome: Outcome) -> None:
        """The member staged for upload with its record, or its failure recorded."""
        if self._open is None:
            self._open = _OpenBatch(conversion.batch)
        opened = self._open
        assert opened.batch is conversion.batch, "a batch's end comes before the next batch's members"
        opened.conversions.append(conversion)
        member = conversion.member
        if conversion.failed is not None:  # settled by `submit`: its conversion failed
            opened.records.append(conversion.failed)
        elif isinstance(outcome, CancelledError):
            opened.left.append(conversion)
        elif not isinstance(outcome, Transcript) or conversion.info is None:
            conversion.flac.unlink(missing_ok=True)
            opened.records.append(self.failed(member, str(outcome)))
        else:
            try:
                opened.records.append(self._stage(conversion, conversion.info, outcome))
            except OSError as exc:  # its outputs cannot be written: it fails alone
                if exc.errno == errno.ENOSPC:
                    raise
                for path in (conversion.flac, conversion.staged):
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                opened.records.append(self.failed(member, f"could not write its output: {exc}"))
                return
            opened.audio_s += conversion.info.output_duration_s

    def _stage(self, conversion: Conversion, info: AudioInfo, result: Transcript) -> MemberRecord:
        """The transcribed member's FLAC and JSON into the upload stage; its record."""
        member = conversion.member
        result = replace(result, source=info.source())
        if self.worker.speakers is not None:
            with self.tally.cpu.thread("speakers"):
                result = self.worker.speakers.attribute_or_skip(
                    result, conversion.flac, keep_words=self.worker.options.timestamps is Timestamps.WORD
                )
        with self.tally.cpu.thread("outputs"):
            conversion.staged.parent.mkdir(parents=True, exist_ok=True)
            conversion.flac.replace(conversion.staged)
            subtitles = write_beside(
                conversion.staged,
                result,
                self.worker.subtitle_formats,
                speaker_prefix=self.worker.config.srt_speakers,
            )
        return MemberRecord.transcribed(
            member.name,
            result,
            size_bytes=member.size,
            sample_rate=info.sample_rate,
            channels=info.channels,
            duration_s=info.output_duration_s,
            remote_path=self.worker.destination.url(self.output_path(member)),
            audio_reader=info.reader,
            subtitles=subtitles,
        )

    def close(self, end: BatchEnd[Batch] | None) -> Upload | None:
        """Record the batch's members in one statement; its upload, when any is transcribed."""
        opened, self._open = self._open, None
        if opened is None:
            if end is not None:  # nothing of it to convert: skipped or rejected members only
                self._drop(end.value)
                log_progress(self.worker, end.value, self.reader)
            return None
        batch = opened.batch
        self._time(opened)
        decoded = [c.member.name for c in opened.conversions if c.submitted_at is not None]
        self.store.members.clear_in_flight(self.key.archive, decoded)  # back from the decoder, alive
        if opened.left:  # converted, but the stop cancelled their decoding
            self.tally.count("left", len(opened.left))
            log.info("stopping: %d members of batch %d left for the next run", len(opened.left), batch.number)
        refused = {r.member for r in self.store.members.record(self.key, opened.records)}
        if refused:  # failed alone: its staged files must not go up with the batch
            self.tally.count("failed", len(refused))
            for conversion in opened.conversions:
                if conversion.member.name in refused:
                    remove_staged(conversion.staged, self.worker.subtitle_formats)
        to_upload = [
            (r.member, r.remote_path or "")
            for r in opened.records
            if r.status == MemberStatus.UPLOADING and r.member not in refused
        ]
        log_progress(self.worker, batch, self.reader)
        if not to_upload:
            self._drop(batch)
            return None
        on_finish = BatchUpload(self.worker, batch, to_upload, opened.audio_s, time.time()).finished
        label = f"{self.key.archive} batch {batch.number} ({len(to_upload)} files)"
        return Upload(batch.directory / "stage", label, on_finish)

    def _time(self, opened: _OpenBatch) -> None:
        """The batch's convert and transcribe stages, for the stage timings."""
        batch, conversions = opened.batch, opened.conversions
        converted = [c.converted_at for c in conversions if c.converted_at is not None]
        if converted:
            started = min(c.extracted_at for c in conversions)
            self.tally.timed(batch.number, "convert", started, max(converted), members=len(conversions))
        submitted = [c.submitted_at for c in conversions if c.submitted_at is not None]
        if submitted:
            transcribed = sum(r.status == MemberStatus.UPLOADING for r in opened.records)
            self.tally.timed(
                batch.number, "transcribe", min(submitted), members=transcribed, audio_s=opened.audio_s
            )

    def _drop(self, batch: Batch) -> None:
        self.tally.flush_timings(self.store, self.worker.run_id, batch.number)
        shutil.rmtree(batch.directory, ignore_errors=True)

    # -- bookkeeping (any thread) ----------------------------------------------------------
    def output_path(self, member: Member) -> str:
        """`DATE/SLOT/<member path>.flac`: the same relative path in the stage and on the remote."""
        return f"{self.key.day.isoformat()}/{self.key.slot}/{member.output_stem}.flac"

    def failed(self, member: Member, reason: str) -> MemberRecord:
        log.warning("member %r failed: %s", member.name, reason)
        self.tally.count("failed", 1)
        return MemberRecord(member.name, MemberStatus.FAILED, size_bytes=member.size, error=reason)


@dataclass(frozen=True)
class BatchUpload:
    """A batch on its way to the destination; `finished` runs in an upload thread once rsync
    ended: the batch's members are done once rsync confirmed them, or failed."""

    worker: ArchiveWorker
    batch: Batch
    members: list[tuple[str, str]]  # (member, remote path)
    audio_s: float
    queued_at: float  # unix time

    def finished(self, job: UploadJob | None) -> None:
        tally, batch = self.worker.tally, self.batch
        try:
            if job is None:  # stopping, no upload slot within the grace: the next run redoes them
                tally.count("left", len(self.members))
                log.info("stopping: batch %d not uploaded (no upload slot within the grace)", batch.number)
            elif job.state is UploadState.WITHDRAWN:  # the archive is another's now: write nothing
                tally.count("left", len(self.members))
            else:
                self._record(job)
        finally:
            tally.flush_timings(self.worker.store, self.worker.run_id, batch.number)
            shutil.rmtree(batch.directory, ignore_errors=True)

    def _record(self, job: UploadJob) -> None:
        w = self.worker
        tally, members, store, archive = w.tally, self.members, w.store, w.key.archive
        try:
            tally.timers.add("upload", job.finished - job.started)
            started = max(self.queued_at, time.time() - (time.monotonic() - job.started))
            uploaded = len(members) if job.state is UploadState.DONE else 0
            audio_s = self.audio_s if uploaded else 0.0
            tally.timed(self.batch.number, "upload", started, members=uploaded, audio_s=audio_s)
            if job.state is UploadState.DONE:
                store.members.mark_done(archive, members)
                tally.count("done", len(members), audio_s=self.audio_s)
            else:
                error = f"upload failed: {job.error}"
                tally.error(error)
                store.members.mark_failed(archive, [m for m, _ in members], error)
                tally.count("failed", len(members))
        except StoreError as exc:
            # The files are on the destination; a rerun finds them still 'uploading' and
            # uploads them again (rsync makes that idempotent).
            tally.error(str(exc))
            log.error("could not record upload of batch %d: %s", self.batch.number, exc)


def log_progress(worker: ArchiveWorker, batch: Batch, reader: ArchiveReader) -> None:
    """At each batch's end: the log line and the archive row's progress."""
    elapsed = time.monotonic() - worker.started
    c = worker.tally.counts()
    audio_s = worker.tally.audio_s
    assert worker.uploader is not None
    u = worker.uploader.counts()
    share = 100.0 * batch.compressed_bytes_read / max(1, reader.compressed_size)
    eta = elapsed * (100.0 - share) / share if share > 0 else float("nan")
    log.info(
        "batch %d: %d members seen (done %d, failed %d, rejected %d, skipped %d), "
        "audio %.3f h, %.1fx realtime, uploads queued=%d running=%d done=%d failed=%d, "
        "archive %.1f%% read, eta %.0fs",
        batch.number,
        reader.members_seen,
        c["done"],
        c["failed"],
        c["rejected"],
        c["skipped"],
        audio_s / 3600,
        audio_s / elapsed if elapsed > 0 else 0.0,
        u["queued"],
        u["running"],
        u["done"],
        u["failed"],
        share,
        eta,
    )
    worker.tally.flush_gpu(worker.store, worker.run_id)
    try:
        worker.store.archives.progress(
            worker.key.archive,
            bytes_read=batch.compressed_bytes_read,
            members_seen=reader.members_seen,
        )
    except StoreError as exc:
        log.warning("progress not recorded: %s", exc)

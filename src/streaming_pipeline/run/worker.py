"""One archive end to end, with the stages overlapped.

    reader thread:   extract batch N+1 member by member, each handed to the process pool at once
    process pool:    decode/downmix/resample to 16 kHz FLAC (the source is deleted when read)
    main thread:     hand batch N's members to the decoder as each conversion completes
    decoder:         one queue of windows across members and batches (decoder.py)
    finisher thread: collect batch N-1's transcripts in order, record them, queue the upload
    upload threads:  rsync, then mark the batch's members done and delete its scratch

The main thread goes on to the next batch as soon as this one is handed over, so the decoder
never waits for a batch's last member before it has the next batch's rows. The reader works one
batch ahead of the main thread, the decoder holds at most `process_batch_size` members, at most
one handed-over batch waits for the finisher and a fixed number for upload, so memory and
scratch stay bounded whatever the archive's size. A member is `done` only after rsync confirmed
its upload.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import queue
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import PipelineConfig, subtitle_formats
from ..errors import ArchiveError, ConversionError, LeaseLost, PipelineError, StoreError, TranscriptionError
from ..stages.archive import ArchiveReader, Batch, Member
from ..stages.asr.factory import open_decoder
from ..stages.asr.options import DecodeOptions
from ..stages.asr.protocol import Decoder, TranscriberLike
from ..stages.audio import AudioInfo, convert_to_flac, take_samples
from ..stages.cpu import DECODING, CpuTimes, native_threads_cpu, split_cpu
from ..stages.pool import ConversionPool
from ..stages.subtitles import remove_staged, write_beside
from ..stages.transcript import Transcript
from ..stages.upload import AsyncRsyncStorageManager, UploadJob, UploadState
from ..state.lease import ArchiveLease, Owner
from ..state.states import ArchiveState, MemberStatus
from ..state.store import MemberRecord, ProgressStore, StageTiming
from .control import UploadSlots
from .day import archive_key
from .gpu import GpuSampler
from .skeleton import Feed, RunTally, StagedRun, limit_requeues, poison_members

log = logging.getLogger(__name__)

# Batches that may sit in scratch waiting for, or during, their upload.
MAX_BATCHES_UPLOADING = 2


@dataclass
class _Conversion:
    member: Member
    flac: Path  # where the pool writes it
    staged: Path  # where it waits for upload once transcribed, beside its JSON
    future: Future[AudioInfo]


@dataclass
class _Prepared:
    batch: Batch
    conversions: list[_Conversion]
    extract_started: float  # unix time: its conversions started as its members were extracted


@dataclass
class _Entry:
    """A member handed to the decoder (`future`), failed before it (`record`), or left for the
    next run because the run is stopping (neither)."""

    conversion: _Conversion
    info: AudioInfo | None = None
    future: Future[Transcript] | None = None
    record: MemberRecord | None = None


@dataclass
class _Submitted:
    batch: Batch
    entries: list[_Entry]
    submitted_at: float | None = None  # when its first member went to the decoder (unix time)


@dataclass
class WorkerResult:
    archive: str
    state: str
    done: int
    failed: int
    rejected: int
    pending: int
    audio_s: float
    run_audio_s: float
    wall_s: float
    error: str | None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_cpu_s: dict[str, float] = field(default_factory=dict)  # flow.split_cpu's
    progress: list[tuple[float, float]] = field(default_factory=list)  # (s since start, audio s done)

    @property
    def ok(self) -> bool:
        return self.state == ArchiveState.DONE

    @property
    def interrupted(self) -> bool:
        return self.state == ArchiveState.INTERRUPTED

    def summary_line(self) -> str:
        rt = self.run_audio_s / self.wall_s if self.wall_s > 0 else 0.0
        line = (
            f"{self.archive}: {self.state} - done {self.done}, failed {self.failed}, "
            f"rejected {self.rejected}, pending {self.pending}; audio {self.audio_s / 3600:.3f} h "
            f"done, {self.run_audio_s:.1f} s of it in {self.wall_s:.1f} s ({rt:.1f}x realtime)"
        )
        return line + (f"; error: {self.error}" if self.error else "")


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


class ArchiveWorker(StagedRun):
    """One archive, read once from its start to its end: members extracted in batches,
    converted, transcribed, recorded and uploaded; those done before are skipped."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        day: dt.date,
        archive_path: Path,
        slot: str,
        store: ProgressStore,
        transcriber_factory: Callable[[PipelineConfig], TranscriberLike],
        converter: Callable[..., AudioInfo] = convert_to_flac,
    ) -> None:
        """`converter(src, dst, remove_source=True, keep_samples=True)` runs in a conversion
        process (a stand-in there lets a test crash or hang one)."""
        super().__init__(config, store, ArchiveTally())
        self.tally: ArchiveTally
        self.day = day
        self.archive_path = archive_path
        self.slot = slot
        self.key = archive_key(day, archive_path, slot)
        self.transcriber_factory = transcriber_factory
        self.converter = converter
        self._subtitle_formats = subtitle_formats(config.subtitles)
        # Per run: a worker that stalled past its lease and resumes never writes into the
        # scratch of the run that took its archive over (on a shared or the same node).
        self.slot_scratch = config.scratch_dir / day.isoformat() / slot
        self.job_scratch = self.slot_scratch / f"run-{socket.gethostname()}-{os.getpid()}"
        self._upload_slots = UploadSlots(MAX_BATCHES_UPLOADING, self.control)
        self._finisher_error: BaseException | None = None
        self._run_id: int | None = None
        self._suspects: set[str] = set()  # in flight when an earlier run died: decoded alone
        self._decoding: dict[str, Future[Transcript]] = {}  # handed to the decoder (main thread)

    # -- public -----------------------------------------------------------------------------
    def record_interrupted(self, reason: str) -> None:
        self.store.archives.finish(
            self.key.archive, state=ArchiveState.INTERRUPTED, error=reason, wall_s=0.0, run_id=self._run_id
        )

    def run(self) -> WorkerResult:
        """Under the archive's lease (ArchiveBusy when a live worker holds it). Raises LeaseLost,
        having written nothing more, when another worker took the archive over."""
        lease = ArchiveLease(
            self.store,
            self.key,
            path=str(self.archive_path),
            owner=Owner(self.config.slurm_job_id, socket.gethostname(), os.getpid()),
            lease_s=self.config.lease_s,
            on_lost=self.request_stop,
        )
        with lease:
            return self._run_held()

    def _run_held(self) -> WorkerResult:
        started = time.monotonic()
        try:
            return self._run(started)
        except Exception as exc:
            lost = exc if isinstance(exc, LeaseLost) else self.store.lease_lost
            if lost is not None:
                shutil.rmtree(self.job_scratch, ignore_errors=True)
                raise lost from None
            # Leave no 'running' row behind a crash: say what happened, then let the CLI report it.
            try:
                error = f"worker stopped by an error: {exc}"
                self.store.archives.finish(
                    self.key.archive,
                    state=ArchiveState.FAILED,
                    error=error,
                    wall_s=time.monotonic() - started,
                    run_id=self._run_id,
                    audio_s=self.tally.audio_s,
                )
            except StoreError as store_exc:
                log.error("could not record the failure of %s: %s", self.key.archive, store_exc)
            raise

    def _run(self, started: float) -> WorkerResult:
        # Leftovers of earlier runs of this archive: killed, or fenced out by our lease.
        shutil.rmtree(self.slot_scratch, ignore_errors=True)
        self.job_scratch.mkdir(parents=True, exist_ok=True)
        log.info("scratch: %s", self.job_scratch)
        self.destination.prepare()
        # Started now: the processes import the decoders while the database and model load.
        cpu, db_cpu, native_cpu = CpuTimes.now(), self.store.client_cpu_s, native_threads_cpu()
        pool = ConversionPool(self.config.num_workers, timeout=self.config.decode_timeout)
        try:
            result = self._run_with(pool, started)
        finally:
            pool.close()  # its processes end here, so their CPU is in CpuTimes' children
        self.tally.cpu.add("samples", pool.receive_cpu_s)  # a member's samples come with its answer
        self.tally.cpu.add("database", self.store.client_cpu_s - db_cpu)
        self.tally.cpu.add(DECODING, native_threads_cpu() - native_cpu)
        split = split_cpu(
            CpuTimes.now() - cpu, self.tally.cpu.snapshot(), pool.task_cpu_s, pool.process_cpu_s
        )
        log.info("CPU seconds by stage: %s", ", ".join(f"{k} {v:.2f}" for k, v in split.items()))
        return replace(result, stage_cpu_s=split)

    def _run_with(self, pool: ConversionPool, started: float) -> WorkerResult:
        self._run_id = self.store.archives.start(
            self.key,
            path=str(self.archive_path),
            bytes_total=self.archive_path.stat().st_size,
            host=socket.gethostname(),
            pid=os.getpid(),
            slurm_job_id=self.config.slurm_job_id,
        )
        self._reconcile()
        poison, self._suspects = poison_members(self.store.members.count_crashes(self.key.archive))
        self._fail_poison(poison)
        done_before = self.store.members.done(self.key.archive)
        if done_before:
            log.info("resuming %s: %d members already done", self.key.archive, len(done_before))
        skip = done_before | set(poison)
        converting: list[_Conversion] = []  # the batch being read; only the reader thread touches it

        def convert(member: Member, batch: Batch) -> None:
            assert member.path is not None
            stage_root = batch.directory / "stage"
            staged = stage_root / self._output_path(member)
            if not staged.resolve().is_relative_to(stage_root.resolve()):
                raise PipelineError(f"refusing to write outside scratch for {member.name!r}")
            flac = batch.directory / "converted" / f"{member.index:08d}.flac"
            future = pool.submit(
                self.converter, str(member.path), str(flac), remove_source=True, keep_samples=True
            )
            converting.append(_Conversion(member, flac, staged, future))

        def take_conversions() -> list[_Conversion]:
            taken = converting[:]
            converting.clear()
            return taken

        reader = ArchiveReader(
            self.archive_path,
            self.job_scratch,
            batch_size=self.config.stream_batch_size,
            max_member_bytes=self.config.max_member_bytes,
            max_members=self.config.max_members,
            is_done=skip.__contains__,
            on_extracted=convert,
        )
        archive_error: str | None = None
        transcriber = self.transcriber_factory(self.config)
        decoder = open_decoder(transcriber, DecodeOptions.of(self.config))
        self.tally.gpu = GpuSampler(getattr(getattr(transcriber, "device", None), "device", "cpu"))
        self.tally.gpu.start()
        uploader = self.open_uploads()
        ahead = threading.Semaphore(1)  # batches read ahead of the one being handed over
        feed: Feed[_Prepared] = Feed(
            lambda put: self._produce(reader, take_conversions, put, ahead), self, maxsize=1
        )
        handed: queue.Queue[_Submitted | None] = queue.Queue(maxsize=1)
        finisher = threading.Thread(
            target=self._finisher,
            args=(handed, decoder, uploader, reader, started),
            name="finisher",
            daemon=True,
        )
        feed.start()
        finisher.start()
        try:
            while self._finisher_error is None:
                item = feed.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, ArchiveError):
                        archive_error = str(item)
                        log.error("%s", item)
                        break
                    raise item
                ahead.release()  # the reader may start on the next batch
                if self.control.reason is not None:
                    self._release(item)
                    break
                self._hand_over(handed, self._submit(item, decoder), finisher)
        finally:
            self.control.event.set()
            feed.join()
            self._hand_over(handed, None, finisher)
            finisher.join()
            self.close_decoder(decoder)
            self.tally.gpu.stop()
            self.tally.flush_gpu(self.store, self._run_id)
            self.end_uploads(self.config.upload_timeout * (self.config.upload_retries + 1))
            uploader.close()
        if self._finisher_error is not None:
            raise self._finisher_error
        if self.store.lease_lost is not None:
            raise self.store.lease_lost
        return self._finish(reader, archive_error, started)

    def _reconcile(self) -> None:
        """Members an earlier run uploaded but could not mark done (the database was down when
        rsync finished) are marked done if their FLAC and JSON are on the destination: a rerun
        records them, it does not upload them again."""
        uploading = self.store.members.uploading(self.key.archive)
        if not uploading:
            return
        wanted: dict[str, tuple[str, list[str]]] = {}
        for member, remote, subtitles in uploading:
            flac = Path(self.destination.relpath(remote))
            files = [flac, flac.with_suffix(".json"), *(flac.with_suffix(f".{fmt}") for fmt in subtitles)]
            wanted[member] = (remote, [str(f) for f in files])
        checker = AsyncRsyncStorageManager.from_config(self.config, self.destination, max_concurrent=1)
        try:
            present = checker.existing(
                [p for _, files in wanted.values() for p in files], self.job_scratch / "reconcile"
            )
        finally:
            checker.close()
        confirmed = [(m, remote) for m, (remote, files) in wanted.items() if present.issuperset(files)]
        self.store.members.mark_done(self.key.archive, confirmed)
        log.info(
            "reconciled %s: %d of %d members left uploading by an earlier run are on the destination",
            self.key.archive,
            len(confirmed),
            len(uploading),
        )

    # -- stages -----------------------------------------------------------------------------
    def _produce(
        self,
        reader: ArchiveReader,
        take_conversions: Callable[[], list[_Conversion]],
        put: Callable[[_Prepared], None],
        ahead: threading.Semaphore,
    ) -> None:
        """The reader thread: batch after batch, each as soon as its members are extracted (their
        conversions already started), at most one ahead of the main thread."""
        batches = reader.batches()
        while not self.control.event.is_set():
            if not ahead.acquire(timeout=0.5):
                continue
            t0, wall0 = time.monotonic(), time.time()
            with self.tally.cpu.thread("reader"):
                batch = next(batches, None)
            self.tally.timers.add("extract", time.monotonic() - t0)
            if batch is None:
                break
            members = len(batch.members) + len(batch.rejected) + batch.skipped
            self.tally.timed(
                batch.number, "extract", wall0, members=members, bytes_read=batch.compressed_bytes_read
            )
            if batch.rejected:
                for m in batch.rejected:
                    log.warning("rejected member %r: %s", m.name, m.reject_reason)
                self.tally.count("rejected", len(batch.rejected))
                self.store.members.record(
                    self.key,
                    [
                        MemberRecord(
                            m.name,
                            MemberStatus.REJECTED,
                            size_bytes=m.size,
                            error=m.reject_reason,
                            full_name=m.full_name,
                        )
                        for m in batch.rejected
                    ],
                )
            self.tally.count("skipped", batch.skipped)
            put(_Prepared(batch, take_conversions(), wall0))

    def _submit(self, prepared: _Prepared, decoder: Decoder) -> _Submitted:
        """Hand each member to the decoder as soon as its conversion is done; when the run is
        stopping, the members not handed over stay pending."""
        entries = []
        batch = prepared.batch
        submitted_at: float | None = None
        self._settle_decoding(wait=False)
        converted_at = prepared.extract_started
        for conversion in prepared.conversions:
            if self.control.reason is not None:
                entries.append(_Entry(conversion))
                continue
            member = conversion.member
            t0 = time.monotonic()
            try:
                info = self._converted(conversion.future)
            except CancelledError:  # the run is stopping: the member stays pending
                entries.append(_Entry(conversion))
                continue
            except ConversionError as exc:  # a failure, its process's death or its timeout
                if member.path is not None:
                    member.path.unlink(missing_ok=True)
                entries.append(_Entry(conversion, record=self._failed(member, str(exc))))
                continue
            finally:
                self.tally.timers.add("convert_wait", time.monotonic() - t0)
                converted_at = time.time()
            self.tally.timers.add("convert", info.convert_s)
            t1 = time.monotonic()
            submitted_at = submitted_at or time.time()
            suspect = member.name in self._suspects
            if suspect:  # alone with the decoder: a death now is this member's
                self._settle_decoding()
            self.store.members.mark_in_flight(self.key.archive, [member.name])
            with self.tally.cpu.thread("samples"):  # the decoder's float32, from the kept 16-bit
                info, audio = take_samples(info, conversion.flac)
            future = decoder.submit(audio, archive=self.key.archive, member=member.name)
            del audio
            self._decoding[member.name] = future
            if suspect:
                self._settle_decoding()
            self.tally.timers.add("wait_for_decoder", time.monotonic() - t1)
            entries.append(_Entry(conversion, info=info, future=future))
        if prepared.conversions:
            members = len(prepared.conversions)
            self.tally.timed(batch.number, "convert", prepared.extract_started, converted_at, members=members)
        return _Submitted(prepared.batch, entries, submitted_at)

    def _fail_poison(self, poison: dict[str, int]) -> None:
        """Members in flight when earlier runs died, that often: failed, and skipped by the reader."""
        for member, runs in poison.items():
            log.error("member %r was being decoded when %d runs of this archive died: failed", member, runs)
        self.store.members.record(
            self.key,
            [
                MemberRecord(m, MemberStatus.FAILED, error=f"crashed the worker in {n} runs")
                for m, n in poison.items()
            ],
        )
        self.tally.count("failed", len(poison))

    def _settle_decoding(self, *, wait: bool = True) -> None:
        """Say which members handed to the decoder are back (a death now is not theirs); with
        `wait`, first wait until all are (or the run stops)."""
        pending = list(self._decoding.items())
        for _member, future in pending if wait else ():
            while not future.done() and not self.control.requested:
                with contextlib.suppress(FutureTimeout, CancelledError, TranscriptionError):
                    future.result(timeout=0.5)
        back = [m for m, f in pending if f.done()]
        for member in back:
            del self._decoding[member]
        self.store.members.clear_in_flight(self.key.archive, back)

    def _converted(self, future: Future[AudioInfo]) -> AudioInfo:
        """The conversion's outcome (the pool ends one past --decode-timeout); CancelledError
        when the run is asked to stop first."""
        while True:
            try:
                return future.result(timeout=0.5)
            except FutureTimeout:
                if self.control.requested:
                    future.cancel()
                    raise CancelledError from None

    def _hand_over(
        self, handed: queue.Queue[_Submitted | None], item: _Submitted | None, finisher: threading.Thread
    ) -> None:
        """To the finisher, unless it has died (its error ends the run)."""
        while finisher.is_alive():
            try:
                handed.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _finisher(
        self,
        handed: queue.Queue[_Submitted | None],
        decoder: Decoder,
        uploader: AsyncRsyncStorageManager,
        reader: ArchiveReader,
        started: float,
    ) -> None:
        try:
            while (item := handed.get()) is not None:
                self._finish_batch(item, decoder, uploader)
                self._log_progress(item.batch, reader, uploader, started)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises
            self._finisher_error = exc
            self.control.event.set()
            decoder.cancel_pending()

    def _finish_batch(
        self, submitted: _Submitted, decoder: Decoder, uploader: AsyncRsyncStorageManager
    ) -> None:
        """Collect the batch's transcripts in order, record them, then queue the batch's upload."""
        batch = submitted.batch
        records: list[MemberRecord] = []
        left: list[_Conversion] = []
        audio_s = 0.0
        for entry in submitted.entries:
            if entry.record is not None:
                records.append(entry.record)
                continue
            if entry.future is None or entry.info is None:
                left.append(entry.conversion)
                continue
            try:
                result = self.transcript(entry.future, decoder)
            except CancelledError:
                left.append(entry.conversion)
                continue
            except TranscriptionError as exc:
                entry.conversion.flac.unlink(missing_ok=True)
                records.append(self._failed(entry.conversion.member, str(exc)))
                continue
            try:
                records.append(self._stage(entry.conversion, entry.info, result))
            except OSError as exc:  # its outputs cannot be written: it fails alone
                if exc.errno == errno.ENOSPC:
                    raise
                for path in (entry.conversion.flac, entry.conversion.staged):
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                records.append(self._failed(entry.conversion.member, f"could not write its output: {exc}"))
                continue
            audio_s += entry.info.output_duration_s
        decoded = [e.conversion.member.name for e in submitted.entries if e.future is not None]
        self.store.members.clear_in_flight(self.key.archive, decoded)  # back from the decoder, alive
        if submitted.submitted_at is not None:
            transcribed = sum(r.status == MemberStatus.UPLOADING for r in records)
            self.tally.timed(
                batch.number, "transcribe", submitted.submitted_at, members=transcribed, audio_s=audio_s
            )
        if left:
            self._cancel(left)
            self.tally.count("left", len(left))
            log.info("stopping: %d members of batch %d left for the next run", len(left), batch.number)
        refused = {r.member for r in self.store.members.record(self.key, records)}
        if refused:  # failed alone: its staged files must not go up with the batch
            self.tally.count("failed", len(refused))
            for entry in submitted.entries:
                if entry.conversion.member.name in refused:
                    remove_staged(entry.conversion.staged, self._subtitle_formats)
        to_upload = [
            (r.member, r.remote_path or "")
            for r in records
            if r.status == MemberStatus.UPLOADING and r.member not in refused
        ]
        if not to_upload:
            self.tally.flush_timings(self.store, self._run_id, batch.number)
            shutil.rmtree(batch.directory, ignore_errors=True)
            return
        t2 = time.monotonic()
        taken = self._upload_slots.take()  # bounded: at most N batches in scratch awaiting upload
        self.tally.timers.add("wait_for_upload_slot", time.monotonic() - t2)
        if not taken:  # stopping, and no upload finished within the grace: the next run redoes them
            self.tally.count("left", len(to_upload))
            self.tally.flush_timings(self.store, self._run_id, batch.number)
            shutil.rmtree(batch.directory, ignore_errors=True)
            log.info("stopping: batch %d not uploaded (no upload slot within the grace)", batch.number)
            return
        queued_at = time.time()
        uploader.submit(
            batch.directory / "stage",
            label=f"{self.key.archive} batch {batch.number} ({len(to_upload)} files)",
            on_finish=lambda job: self._uploaded(job, batch, to_upload, audio_s, queued_at),
        )

    def _stage(self, conversion: _Conversion, info: AudioInfo, result: Transcript) -> MemberRecord:
        """The transcribed member's FLAC and JSON into the upload stage; its record."""
        member = conversion.member
        result = replace(result, source=info.source())
        with self.tally.cpu.thread("outputs"):
            conversion.staged.parent.mkdir(parents=True, exist_ok=True)
            conversion.flac.replace(conversion.staged)
            subtitles = write_beside(conversion.staged, result, self._subtitle_formats)
        return MemberRecord(
            member.name,
            MemberStatus.UPLOADING,
            size_bytes=member.size,
            sample_rate=info.sample_rate,
            channels=info.channels,
            duration_s=info.output_duration_s,
            remote_path=self.destination.url(self._output_path(member)),
            decoder=info.decoder,
            timestamps=self.config.timestamps,
            subtitles=subtitles,
            **result.record_fields(),
        )

    def _uploaded(
        self, job: UploadJob, batch: Batch, members: list[tuple[str, str]], audio_s: float, queued_at: float
    ) -> None:
        try:
            if job.state is UploadState.WITHDRAWN:  # the archive is another worker's now: write nothing
                self.tally.count("left", len(members))
                return
            self.tally.timers.add("upload", job.finished - job.started)
            started = max(queued_at, time.time() - (time.monotonic() - job.started))
            uploaded = len(members) if job.state is UploadState.DONE else 0
            self.tally.timed(
                batch.number, "upload", started, members=uploaded, audio_s=audio_s if uploaded else 0.0
            )
            self.tally.flush_timings(self.store, self._run_id, batch.number)
            if job.state is UploadState.DONE:
                self.store.members.mark_done(self.key.archive, members)
                self.tally.count("done", len(members), audio_s=audio_s)
            else:
                error = f"upload failed: {job.error}"
                self.tally.error(error)
                self.store.members.mark_failed(self.key.archive, [m for m, _ in members], error)
                self.tally.count("failed", len(members))
        except StoreError as exc:
            # The files are on the destination; a rerun finds them still 'uploading' and
            # uploads them again (rsync makes that idempotent).
            self.tally.error(str(exc))
            log.error("could not record upload of batch %d: %s", batch.number, exc)
        finally:
            shutil.rmtree(batch.directory, ignore_errors=True)
            self._upload_slots.give()

    def _release(self, prepared: _Prepared) -> None:
        """Drop a converted batch unprocessed: its members stay pending for the next run."""
        self._cancel(prepared.conversions)
        self.tally.count("left", len(prepared.conversions))
        shutil.rmtree(prepared.batch.directory, ignore_errors=True)
        log.info("stopping: batch %d left for the next run", prepared.batch.number)

    @staticmethod
    def _cancel(conversions: list[_Conversion]) -> None:
        """Conversions not started are cancelled; outputs of running ones stay outside the upload
        stage and go with the job's scratch."""
        for conversion in conversions:
            conversion.future.cancel()

    # -- bookkeeping ------------------------------------------------------------------------
    def _output_path(self, member: Member) -> str:
        """`DATE/SLOT/<member path>.flac`: the same relative path in the stage and on the remote."""
        return f"{self.day.isoformat()}/{self.slot}/{member.output_stem}.flac"

    def _failed(self, member: Member, reason: str) -> MemberRecord:
        log.warning("member %r failed: %s", member.name, reason)
        self.tally.count("failed", 1)
        return MemberRecord(member.name, MemberStatus.FAILED, size_bytes=member.size, error=reason)

    def _log_progress(
        self, batch: Batch, reader: ArchiveReader, uploader: AsyncRsyncStorageManager, started: float
    ) -> None:
        elapsed = time.monotonic() - started
        c = self.tally.counts()
        audio_s = self.tally.audio_s
        u = uploader.counts()
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
        self.tally.flush_gpu(self.store, self._run_id)
        try:
            self.store.archives.progress(
                self.key.archive,
                bytes_read=batch.compressed_bytes_read,
                members_seen=reader.members_seen,
            )
        except StoreError as exc:
            log.warning("progress not recorded: %s", exc)

    def _finish(self, reader: ArchiveReader, archive_error: str | None, started: float) -> WorkerResult:
        wall = time.monotonic() - started
        summary = self.store.archives.summary(self.key.archive)
        complete = reader.completed and summary["pending"] == 0 and not self.tally["left"]
        state, error = self.outcome(complete=complete, damage=archive_error)
        if self.config.slurm_job_id:  # only a Slurm job requeues itself
            state, error = limit_requeues(
                state, error, restarts=self.config.slurm_restart_count, max_restarts=self.config.max_restarts
            )
        self.store.archives.finish(
            self.key.archive,
            state=state,
            error=error,
            wall_s=wall,
            run_id=self._run_id,
            audio_s=self.tally.audio_s,
        )
        shutil.rmtree(self.job_scratch, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: a stalled, fenced-out run's leftovers
            self.slot_scratch.rmdir()
        self.tally.timers.log()
        return WorkerResult(
            archive=self.key.archive,
            state=state,
            done=summary["done"],
            failed=summary["failed"],
            rejected=summary["rejected"],
            pending=summary["pending"] + self.tally["left"],
            audio_s=float(summary["audio_s"]),
            run_audio_s=self.tally.audio_s,
            wall_s=wall,
            error=error,
            stage_seconds=dict(self.tally.timers.seconds),
            progress=[(at - started, audio) for at, audio in self.tally.progress],
        )

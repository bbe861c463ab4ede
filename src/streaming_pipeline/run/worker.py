"""One archive's run: its lease, its rows, its scratch and its outcome.

What is done to each member (extract, convert, decode, stage, upload, record) is the archive's
work (`archive_work.py`), run by the lifecycle that every worker shares (`engine.py`). This
module holds what is done once a run: the lease, resuming (members done before are skipped,
members left `uploading` are reconciled, members that killed earlier runs are failed or decoded
alone), the CPU accounting and the archive's final state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import PipelineConfig
from ..destination import Rsync
from ..errors import LeaseLost, StoreError
from ..member_files import MemberFiles
from ..stages.archive import ArchiveReader
from ..stages.asr.factory import open_decoder
from ..stages.asr.options import DecodeOptions
from ..stages.asr.protocol import TranscriberFactory
from ..stages.audio import AudioInfo, convert_to_flac
from ..stages.cpu import DECODING, CpuTimes, native_threads_cpu, split_cpu
from ..stages.pool import ConversionPool
from ..stages.speakers import SpeakerOptions, SpeakerStage
from ..state.lease import ArchiveLease
from ..state.records import ArchiveKey
from ..state.states import ArchiveState, MemberStatus
from ..state.store import MemberRecord, ProgressStore
from .archive_work import ArchiveTally, ArchiveWork
from .engine import Lifecycle
from .gpu import GpuSampler
from .job_environment import JobEnvironment
from .skeleton import EndedIn, StagedRun, limit_requeues, poison_members

log = logging.getLogger(__name__)


@dataclass
class WorkerResult(EndedIn):
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
    stage_cpu_s: dict[str, float] = field(default_factory=dict)  # stages/cpu.split_cpu's
    progress: list[tuple[float, float]] = field(default_factory=list)  # (s since start, audio s done)

    def summary_line(self) -> str:
        rt = self.run_audio_s / self.wall_s if self.wall_s > 0 else 0.0
        line = (
            f"{self.archive}: {self.state} - done {self.done}, failed {self.failed}, "
            f"rejected {self.rejected}, pending {self.pending}; audio {self.audio_s / 3600:.3f} h "
            f"done, {self.run_audio_s:.1f} s of it in {self.wall_s:.1f} s ({rt:.1f}x realtime)"
        )
        return line + (f"; error: {self.error}" if self.error else "")


class ArchiveWorker(StagedRun):
    """One archive, read once from its start to its end; those members done before are skipped.
    `run` is the run's main thread; the archive's work (`ArchiveWork`) names the others."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        day: dt.date,
        archive_path: Path,
        slot: str,
        store: ProgressStore,
        transcriber_factory: TranscriberFactory,
        converter: Callable[..., AudioInfo] = convert_to_flac,
        environment: JobEnvironment | None = None,
    ) -> None:
        """`converter(src, dst, remove_source=True, keep_samples=True)` runs in a conversion
        process (a stand-in there lets a test crash or hang one)."""
        super().__init__(config, store, ArchiveTally())
        self.tally: ArchiveTally
        self.day = day
        self.archive_path = archive_path
        self.slot = slot
        self.key = ArchiveKey.of(day, archive_path, slot)
        self.environment = environment or JobEnvironment.of()
        self.transcriber_factory = transcriber_factory
        self.options = DecodeOptions.of(config.decode)  # decided once for the run, passed down
        # Loaded before the archive is touched: a missing or damaged model fails the run at once.
        speaker_options = SpeakerOptions.of(config.decode)
        self.speakers = SpeakerStage(speaker_options) if speaker_options else None
        self.converter = converter
        self.subtitle_formats = config.subtitles
        # Per run: a worker that stalled past its lease and resumes never writes into the
        # scratch of the run that took its archive over (on a shared or the same node).
        self.slot_scratch = config.scratch_dir / day.isoformat() / slot
        self.job_scratch = self.slot_scratch / self.environment.scratch_name
        self.run_id: int | None = None
        self.started = time.monotonic()

    def record_interrupted(self, reason: str) -> None:
        self.store.archives.finish(
            self.key.archive,
            state=ArchiveState.INTERRUPTED,
            error=reason,
            wall_s=time.monotonic() - self.started,
            run_id=self.run_id,
        )

    def record_stopping(self, reason: str) -> None:
        """The archive `interrupted` the moment a stop is asked for, while the run still finishes
        its in-flight members: a SIGKILL after `scancel`'s KillWait then leaves it `interrupted`,
        not `running` under a lease no one renews. The run's end records its outcome over this.
        A worker stopped before it started its archive (under its lease) records nothing."""
        if self.run_id is None:
            return
        try:
            self.store.archives.mark_interrupted(self.key.archive, reason)
        except (StoreError, LeaseLost) as exc:
            log.warning("could not record %s as stopping: %s", self.key.archive, exc)

    def run(self) -> WorkerResult:
        """Under the archive's lease (ArchiveBusy when a live worker holds it). Raises LeaseLost,
        having written nothing more, when another worker took the archive over."""
        lease = ArchiveLease(
            self.store,
            self.key,
            path=str(self.archive_path),
            owner=self.environment.owner,
            lease_s=self.config.lease_s,
            on_lost=self.request_stop,
        )
        with lease:
            return self._run_held()

    def _run_held(self) -> WorkerResult:
        self.started = time.monotonic()
        try:
            return self._run()
        except Exception as exc:
            lost = exc if isinstance(exc, LeaseLost) else self.store.lease_lost
            if lost is not None:
                shutil.rmtree(self.job_scratch, ignore_errors=True)
                raise lost from None
            # Leave no 'running' row behind a crash: say what happened, then let the CLI report it.
            try:
                self.store.archives.finish(
                    self.key.archive,
                    state=ArchiveState.FAILED,
                    error=f"worker stopped by an error: {exc}",
                    wall_s=time.monotonic() - self.started,
                    run_id=self.run_id,
                    audio_s=self.tally.audio_s,
                )
            except StoreError as store_exc:
                log.error("could not record the failure of %s: %s", self.key.archive, store_exc)
            raise

    def _run(self) -> WorkerResult:
        # Leftovers of earlier runs of this archive: killed, or fenced out by our lease.
        shutil.rmtree(self.slot_scratch, ignore_errors=True)
        self.job_scratch.mkdir(parents=True, exist_ok=True)
        log.info("scratch: %s", self.job_scratch)
        self.destination.prepare()
        # Started now: the processes import the decoders while the database and model load.
        cpu, db_cpu, native_cpu = CpuTimes.now(), self.store.client_cpu_s, native_threads_cpu()
        pool = ConversionPool(self.config.num_workers, timeout=self.config.decode_timeout)
        try:
            result = self._run_with(pool)
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

    def _run_with(self, pool: ConversionPool) -> WorkerResult:
        self.run_id = self.store.archives.start(
            self.key,
            path=str(self.archive_path),
            bytes_total=self.archive_path.stat().st_size,
            owner=self.environment.owner,
        )
        self._reconcile()
        poison, suspects = poison_members(self.store.members.count_crashes(self.key.archive))
        self._fail_poison(poison)
        done_before = self.store.members.done(self.key.archive)
        if done_before:
            log.info("resuming %s: %d members already done", self.key.archive, len(done_before))
        skip = done_before | set(poison)
        work = ArchiveWork(self, pool, skip=skip.__contains__, suspects=suspects)
        decoder = open_decoder(self.transcriber_factory(self.options.load), self.options)
        self.tally.gpu = GpuSampler(decoder.device.device)
        self.tally.gpu.start()
        uploader = self.open_uploads()
        batch = self.config.stream_batch_size
        lifecycle = Lifecycle(self, work, decoder, read_ahead=batch + 1, hand_ahead=batch)
        try:
            lifecycle.run_all()
        finally:
            self.close_decoder(decoder)
            self.tally.gpu.stop()
            self.tally.flush_gpu(self.store, self.run_id)
            self.end_uploads(self.config.upload_timeout * (self.config.upload_retries + 1))
            uploader.close()
        if self.store.lease_lost is not None:
            raise self.store.lease_lost
        return self._finish(work.reader, work.damage)

    def _reconcile(self) -> None:
        """Members an earlier run uploaded but could not mark done (the database was down when
        rsync finished) are marked done if their FLAC and JSON are on the destination: a rerun
        records them, it does not upload them again."""
        uploading = self.store.members.uploading(self.key.archive)
        if not uploading:
            return
        wanted: dict[str, tuple[str, list[str]]] = {}
        for member, remote, subtitles in uploading:
            wanted[member] = (
                remote,
                MemberFiles.of_flac(self.destination.relpath(remote), subtitles).names(),
            )
        present = Rsync.of(self.config.destination).existing(
            [p for _, files in wanted.values() for p in files], self.job_scratch / "reconcile"
        )
        confirmed = [(m, remote) for m, (remote, files) in wanted.items() if present.issuperset(files)]
        self.store.members.mark_done(self.key.archive, confirmed)
        log.info(
            "reconciled %s: %d of %d members left uploading by an earlier run are on the destination",
            self.key.archive,
            len(confirmed),
            len(uploading),
        )

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

    def _finish(self, reader: ArchiveReader, archive_error: str | None) -> WorkerResult:
        started = self.started
        wall = time.monotonic() - started
        summary = self.store.archives.summary(self.key.archive)
        complete = reader.completed and summary.pending == 0 and not self.tally["left"]
        state, error = self.outcome(complete=complete, damage=archive_error)
        if self.environment.in_slurm:  # only a Slurm job requeues itself
            state, error = limit_requeues(
                state, error, restarts=self.environment.restarts, max_restarts=self.config.max_restarts
            )
        self.store.archives.finish(
            self.key.archive,
            state=state,
            error=error,
            wall_s=wall,
            run_id=self.run_id,
            audio_s=self.tally.audio_s,
        )
        shutil.rmtree(self.job_scratch, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: a stalled, fenced-out run's leftovers
            self.slot_scratch.rmdir()
        self.tally.timers.log()
        return WorkerResult(
            archive=self.key.archive,
            state=state,
            done=summary.done,
            failed=summary.failed,
            rejected=summary.rejected,
            pending=summary.pending + self.tally["left"],
            audio_s=summary.audio_s,
            run_audio_s=self.tally.audio_s,
            wall_s=wall,
            error=error,
            stage_seconds=dict(self.tally.timers.seconds),
            progress=[(at - started, audio) for at, audio in self.tally.progress],
        )

"""`process-dataset`: a Hugging Face dataset (`hf/source.py`), streamed through the lifecycle
(`engine.py`) that archives go through, out as Parquet shards, resumable after any stop.

    reader thread:   iterate the source (datasets streaming), write each row's audio to scratch,
                     hand it to the conversion pool; a batch end after each shard's last row
    main thread:     hand each converted row to the decoder (rows that already have a
                     transcript are not transcribed)
    finisher thread: append finished rows to the open shard in source order; close it at its end
    upload thread:   rsync each full shard, then checkpoint it in PostgreSQL

Shard k holds source rows [start + k*B, start + (k+1)*B) (B = --upload-batch-size), minus rows
whose audio could not be used (recorded in dataset_failures). Its checkpoint (rows done, shard
number, last id and the source iterator's state after its last row) is written only after rsync
confirmed the upload, and shards are uploaded one at a time and checkpointed in order, so
--resume continues exactly after the last uploaded shard: a shard that was being written or
uploaded when the run stopped is written again under the same name, with the same rows. No row
is lost and none is duplicated.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..errors import ConversionError, DatasetError, UploadError
from ..hf.shards import Shard, ShardWriter, dataset_card, dataset_features, made_by_columns, segment_rows
from ..hf.source import DatasetJob, audio_payload, open_source
from ..stages.asr.factory import open_decoder
from ..stages.asr.options import DecodeOptions
from ..stages.asr.protocol import Decoder, TranscriberFactory
from ..stages.audio import AudioInfo, convert_to_flac, take_samples
from ..stages.pool import ConversionPool
from ..stages.upload import UploadJob, UploadState
from ..state.lease import Lease, holder_is_gone
from ..state.records import DatasetResume, DatasetRun, ShardCheckpoint
from ..state.states import ArchiveState
from ..state.store import ProgressStore
from ..transcript import Transcript
from .engine import BatchEnd, Lifecycle, Outcome, Upload
from .job_environment import JobEnvironment
from .skeleton import EndedIn, RunTally, StagedRun

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """A source row (reader thread), and what the main thread learnt of it."""

    index: int
    id: str
    text: str | None
    src: Path | None
    dst: Path
    future: Future[AudioInfo] | None
    error: str | None = None
    info: AudioInfo | None = None
    given: Transcript | None = None  # the source's own transcript


@dataclass(frozen=True)
class _Boundary:
    """The source rows before `end_row` are all read; `state` resumes the source after them."""

    end_row: int
    state: dict[str, Any] | None
    last: bool = False


@dataclass
class _OpenShard:
    number: int
    first_row: int
    last_id: str | None = None
    failures: list[tuple[int, str | None, str]] = field(default_factory=list)


@dataclass
class DatasetResult(EndedIn):
    run: str
    state: str
    rows_done: int
    rows_written: int
    rows_failed: int
    shards: int
    output: str
    wall_s: float
    error: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def summary_line(self) -> str:
        line = (
            f"{self.run}: {self.state} - {self.rows_done} source rows done ({self.rows_written} written, "
            f"{self.rows_failed} failed) in {self.shards} shards at {self.output}, {self.wall_s:.1f} s"
        )
        return line + (f"; error: {self.error}" if self.error else "")


class DatasetWorker(StagedRun):
    """A dataset streamed from its source, row by row, into Parquet shards uploaded in order;
    a resumed run continues after the last shard uploaded. `run` is the run's main thread."""

    def __init__(
        self,
        config: PipelineConfig,
        job: DatasetJob,
        *,
        store: ProgressStore,
        transcriber_factory: TranscriberFactory,
        environment: JobEnvironment | None = None,
    ) -> None:
        super().__init__(config, store, RunTally())
        self.job = job
        self.transcriber_factory = transcriber_factory
        self.options = DecodeOptions.of(config.decode)  # decided once for the run, passed down
        self.prefix = f"datasets/{job.output}"
        self.scratch = config.scratch_dir / "datasets" / job.output
        # One process per run: a lease on the run's row (state/lease.py), renewed on a heartbeat;
        # a process that lost it (stalled past it, taken over) stops and writes nothing more.
        self.owner = (environment or JobEnvironment.of()).owner
        self.lease = Lease(
            store,
            job.run,
            owner=self.owner,
            lease_s=config.lease_s,
            on_lost=self.request_stop,
            table="dataset_runs",
        )

    def record_interrupted(self, reason: str) -> None:
        self.store.datasets.finish(self.job.run, state=ArchiveState.INTERRUPTED, error=reason)

    def run(self) -> DatasetResult:
        started = time.monotonic()
        source = open_source(self.job, offline=self.config.offline)
        self.destination.prepare()
        spec = DatasetRun(
            self.job.run, self.job.source, self.job.name, self.job.split, self.destination.url(self.prefix)
        )
        resume = self.store.datasets.start(
            spec,
            owner=self.owner,
            resume=self.job.resume,
            lease_s=self.config.lease_s,
            may_take=lambda holder: holder_is_gone(holder, self.owner),
        )
        self.lease.adopt(resume.lease_token)
        try:
            return self._run_held(source, resume, started)
        finally:
            self.lease.release()

    def _run_held(self, source: Any, resume: DatasetResume, started: float) -> DatasetResult:
        if resume.source_state is not None:
            source.load_state_dict(resume.source_state)  # continue after the last uploaded shard
        if resume.rows_done:
            log.info(
                "resuming %s after shard %d: %d source rows done, last id %s",
                self.job.run,
                resume.shards_done - 1,
                resume.rows_done,
                resume.last_id,
            )
        shutil.rmtree(self.scratch, ignore_errors=True)  # a killed run's leftovers
        self.scratch.mkdir(parents=True)
        try:
            complete = self._pipeline(source, resume)
        except BaseException as exc:
            self.store.datasets.finish(
                self.job.run, state=ArchiveState.FAILED, error=f"stopped by an error: {exc}"
            )
            raise
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        state, error = self.outcome(complete=complete)
        totals = self.store.datasets.finish(self.job.run, state=state, error=error)
        self.tally.timers.log()
        return DatasetResult(
            run=self.job.run,
            state=state,
            rows_done=totals.rows_done,
            rows_written=totals.rows_written,
            rows_failed=totals.rows_failed,
            shards=totals.shards_done,
            output=self.destination.url(self.prefix),
            wall_s=time.monotonic() - started,
            error=error,
            stage_seconds=dict(self.tally.timers.seconds),
        )

    def _pipeline(self, source: Any, resume: DatasetResume) -> bool:
        decoder = open_decoder(self.transcriber_factory(self.options.load), self.options)
        uploader = self.open_uploads(max_concurrent=1)  # one upload thread: shards in order
        pool = ConversionPool(self.config.num_workers, timeout=self.config.decode_timeout)
        work = DatasetWork(self, source, pool, start_row=resume.rows_done, first_shard=resume.shards_done)
        # Done rows behind a slow one wait in scratch: at most two decoders' worth.
        hand_ahead = 2 * self.config.process_batch_size
        lifecycle = Lifecycle(
            self, work, decoder, read_ahead=self.config.stream_batch_size, hand_ahead=hand_ahead
        )
        complete = False
        try:
            complete = lifecycle.run_all()
        finally:
            self.close_decoder(decoder)
            pool.close()
            if self.end_uploads(None) and complete and not self.tally.errors():
                self._publish_card()
            uploader.close()
        return complete

    def _publish_card(self) -> None:
        assert self.uploader is not None
        shards = [s for s in self.store.datasets.shards(self.job.run) if s.rows > 0]
        files = [s.remote_path[len(self.destination.url(self.prefix)) + 1 :] for s in shards]
        job = self.job
        card = dataset_card(
            dataset_features(),
            split=job.split,
            files=files,
            rows=sum(s.rows for s in shards),
            size=sum(s.bytes for s in shards),
            title=f"{job.source} through streaming-pipeline",
            about=[
                f"Source: `{job.source}` (config `{job.name or 'default'}`, split `{job.split}`), "
                f"audio column `{job.audio_column}`, converted to 16 kHz mono FLAC and transcribed "
                f"with `{self.config.model}`"
                + (f" where `{job.text_column}` was empty." if job.text_column else "."),
                "Rows whose audio could not be used are listed in the progress database "
                "(`dataset_failures`), not here.",
            ],
        )
        try:
            self.uploader.put_text(card, f"{self.prefix}/README.md", self.scratch / "card")
        except UploadError as exc:
            self.tally.error(str(exc))


class DatasetWork:
    """A dataset's rows through the lifecycle; each method names the thread that runs it."""

    def __init__(
        self, worker: DatasetWorker, source: Any, pool: ConversionPool, *, start_row: int, first_shard: int
    ) -> None:
        self.worker = worker
        self.job = worker.job
        self.tally = worker.tally
        self.source = source
        self.pool = pool
        self.start_row = start_row
        shards = worker.scratch / "shards"
        self.writer = ShardWriter(dataset_features(), shards, split=self.job.split, first_number=first_shard)
        self._shard = _OpenShard(number=first_shard, first_row=start_row)  # finisher thread
        # A row the stop cancelled: neither its shard nor any later one is checkpointed (shards
        # are checkpointed in order), so the next run writes them again (finisher thread).
        self._cut = False

    # -- reader thread ----------------------------------------------------------------------
    def produce(self, put: Callable[[_Row | BatchEnd[_Boundary]], None]) -> None:
        """Each row's audio to scratch and to a conversion process, in source order, with a
        boundary after every shard's last row (and after the last row of all)."""
        job, index = self.job, self.start_row
        if job.limit is not None and index >= job.limit:
            put(BatchEnd(_Boundary(index, None, last=True)))
            return
        iterator: Iterator[dict[str, Any]] = iter(self.source)
        while not self.worker.control.event.is_set():
            record = self._next(iterator, index)
            if record is None:
                put(BatchEnd(_Boundary(index, None, last=True)))
                return
            put(self._stage(record, index))
            index += 1
            if job.limit is not None and index >= job.limit:
                put(BatchEnd(_Boundary(index, None, last=True)))
                return
            if (index - self.start_row) % job.upload_batch_size == 0:
                put(BatchEnd(_Boundary(index, self.source.state_dict())))

    def _next(self, iterator: Iterator[dict[str, Any]], index: int) -> dict[str, Any] | None:
        t0 = time.monotonic()
        try:
            record = next(iterator, None)
        except Exception as exc:  # any failure of the source ends the run
            reason = " ".join(str(exc).split())[:500] or type(exc).__name__
            raise DatasetError(f"reading {self.job.source} failed at row {index}: {reason}") from exc
        finally:
            self.tally.timers.add("read_source", time.monotonic() - t0)
        if record is not None and self.job.audio_column not in record:
            raise DatasetError(
                f"dataset {self.job.source} has no column {self.job.audio_column!r} (--audio-column); "
                f"columns: {list(record)}"
            )
        return record

    def _stage(self, record: dict[str, Any], index: int) -> _Row:
        job = self.job
        row_id = str(record[job.id_column]) if job.id_column else str(index)
        text = record.get(job.text_column) if job.text_column else None
        rows = self.worker.scratch / "rows"
        dst = rows / f"{index}.flac"
        try:
            data, path = audio_payload(record[job.audio_column])
        except ConversionError as exc:
            return _Row(index, row_id, text, None, dst, None, error=str(exc))
        suffix = Path(path).suffix.lower() if re.fullmatch(r"\.\w{1,5}", Path(path).suffix) else ".bin"
        src = rows / f"{index}.src{suffix}"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        # A row with its own transcript is not decoded: its samples need not come back.
        conversion = self.pool.submit(convert_to_flac, str(src), str(dst), keep_samples=not text)
        return _Row(index, row_id, text, src, dst, conversion)

    # -- main thread ------------------------------------------------------------------------
    def submit(self, row: _Row, decoder: Decoder) -> Future[Transcript] | None:
        """Wait for the row's conversion, then hand it to the decoder unless it has a transcript."""
        try:
            if row.future is None:
                raise ConversionError(row.error or "no audio")
            t0 = time.monotonic()
            try:
                info = row.future.result()  # the pool ends a conversion past --decode-timeout
            except CancelledError:
                raise ConversionError("the run stopped before its conversion") from None
            finally:
                self.tally.timers.add("convert_wait", time.monotonic() - t0)
                if row.src is not None:
                    row.src.unlink(missing_ok=True)
        except ConversionError as exc:
            row.error = str(exc)
            return None
        if row.text:  # the source's own transcript: no model, no language, no times
            row.info = info
            row.given = Transcript(
                self.job.run, row.id, "", None, 0.0, info.output_duration_s, text=str(row.text)
            )
            return None
        row.info, audio = take_samples(info, row.dst)
        t1 = time.monotonic()
        future = decoder.submit(audio, archive=self.job.run, member=row.id)
        self.tally.timers.add("wait_for_decoder", time.monotonic() - t1)
        return future

    def leave(self, row: _Row) -> None:
        """The run stops before the row: it is read again by the next run (its shard too)."""
        if row.future is not None:
            row.future.cancel()
        for path in (row.src, row.dst):
            if path is not None:
                path.unlink(missing_ok=True)

    # -- finisher thread --------------------------------------------------------------------
    def finish(self, row: _Row, outcome: Outcome) -> None:
        """Append the row to the open shard, or list it among the shard's failures."""
        try:
            if isinstance(outcome, CancelledError) or self._cut:
                self._cut = True
                return
            result = outcome if isinstance(outcome, Transcript) else row.given
            if isinstance(outcome, Exception):
                row.error = str(outcome) or type(outcome).__name__
            if row.error is not None or result is None or row.info is None:
                log.warning("row %d (id %s) failed: %s", row.index, row.id, row.error)
                self._shard.failures.append((row.index, row.id, row.error or "no result"))
                return
            self.writer.add(
                {
                    "id": row.id,
                    "audio": {"bytes": row.dst.read_bytes(), "path": f"{row.id}.flac"},
                    "duration_s": row.info.output_duration_s,
                    "language": result.language,
                    "transcript": result.text,
                    **made_by_columns(result),
                    "transcript_source": "source" if row.given is not None else "model",
                    "segments": segment_rows(result.segments),
                }
            )
            self._shard.last_id = row.id
        finally:
            row.dst.unlink(missing_ok=True)

    def close(self, end: BatchEnd[_Boundary] | None) -> Upload | None:
        """The shard the boundary ends, to upload; at a stop, the open shard is dropped (its
        rows are redone by the next run). A shard whose rows all failed has no file; its (empty)
        upload still goes through the queue, so that checkpoints stay in order."""
        if end is None or self._cut:
            self.writer.abort()
            return None
        boundary, shard = end.value, self._shard
        if boundary.end_row <= shard.first_row:  # an empty last shard is no shard
            return None
        closed = self.writer.close_shard()
        self._shard = _OpenShard(number=shard.number + 1, first_row=boundary.end_row)
        self.writer.number = self._shard.number  # a shard of failed rows only has a number, no file
        prefix, destination = self.worker.prefix, self.worker.destination
        relpath = f"{prefix}/{closed.relpath}" if closed is not None else ""
        checkpoint = ShardCheckpoint(
            shard=shard.number,
            first_row=shard.first_row,
            end_row=boundary.end_row,
            rows=closed.rows if closed is not None else 0,
            bytes=closed.bytes if closed is not None else 0,
            last_id=shard.last_id,
            remote_path=destination.url(relpath) if closed is not None else "",
            source_state=boundary.state,
            failures=tuple(shard.failures),
        )
        stage = self.worker.scratch / f"upload-{shard.number}"
        label = f"{prefix} shard {shard.number} ({checkpoint.rows} rows)"
        on_finish = functools.partial(self._uploaded, checkpoint, closed, stage)
        if closed is None:
            stage.mkdir(parents=True)
            return Upload(stage, label, on_finish)
        return Upload(stage, label, on_finish, file=(closed.path, relpath))

    # -- upload thread ----------------------------------------------------------------------
    def _uploaded(
        self, checkpoint: ShardCheckpoint, closed: Shard | None, stage: Path, job: UploadJob | None
    ) -> None:
        """Checkpoint the shard once rsync confirmed it; a failure ends the run (it resumes here)."""
        control = self.worker.control
        try:
            if job is None:  # stopping: the shard is written again by the next run
                if closed is not None:
                    closed.path.unlink(missing_ok=True)
            elif job.state is UploadState.DONE and not self.tally.errors():
                self.worker.store.datasets.record_shard(self.job.run, checkpoint)
                log.info(
                    "checkpoint: shard %d uploaded, %d source rows done", checkpoint.shard, checkpoint.end_row
                )
            elif job.state is not UploadState.DONE:
                self.tally.error(f"upload of shard {checkpoint.shard} failed: {job.error}")
                control.event.set()
        except Exception as exc:  # noqa: BLE001 - recorded; the run ends failed and resumes here
            self.tally.error(f"checkpoint of shard {checkpoint.shard} failed: {exc}")
            control.event.set()
        finally:
            shutil.rmtree(stage, ignore_errors=True)

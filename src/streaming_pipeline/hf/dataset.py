"""`process-dataset`: a Hugging Face dataset, streamed through the same conversion and
transcription stages, out as Parquet shards, resumable after any stop.

    reader thread:  iterate the source (datasets streaming), write each row's audio to scratch,
                    hand it to the conversion pool
    main thread:    hand each converted row to the decoder (rows that already have a transcript
                    are not transcribed), append finished rows to the shard in source order
    upload thread:  rsync each full shard, then checkpoint it in PostgreSQL

Shard k holds source rows [start + k*B, start + (k+1)*B) (B = --upload-batch-size), minus rows
whose audio could not be used (recorded in dataset_failures). Its checkpoint (rows done, shard
number, last id and the source iterator's state after its last row) is written only after rsync
confirmed the upload, and shards are checkpointed in order, so --resume continues exactly after
the last uploaded shard: a shard that was being written or uploaded when the run stopped is
written again under the same name, with the same rows. No row is lost and none is duplicated.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..errors import ConversionError, DatasetError, TranscriptionError, UploadError
from ..run.control import UploadSlots
from ..run.skeleton import Feed, RunTally, StagedRun
from ..stages.asr.factory import open_decoder
from ..stages.asr.options import DecodeOptions
from ..stages.asr.protocol import Decoder, TranscriberLike
from ..stages.audio import AudioInfo, convert_to_flac, take_samples
from ..stages.pool import ConversionPool
from ..stages.transcript import Transcript
from ..stages.upload import AsyncRsyncStorageManager, UploadJob, UploadState
from ..state.lease import Lease, Owner, holder_is_gone
from ..state.states import ArchiveState
from ..state.store import DatasetResume, ProgressStore, ShardCheckpoint
from .shards import Shard, ShardWriter, dataset_card, dataset_features, made_by_columns, segment_rows

log = logging.getLogger(__name__)

MAX_SHARDS_UPLOADING = 2


@dataclass(frozen=True)
class DatasetJob:
    source: str
    name: str | None = None
    split: str = "train"
    audio_column: str = "audio"
    text_column: str | None = None
    id_column: str | None = None
    limit: int | None = None
    upload_batch_size: int = 10000
    resume: bool = False
    output_name: str | None = None

    def __post_init__(self) -> None:
        if self.upload_batch_size < 1:
            raise DatasetError("--upload-batch-size must be at least 1")
        if self.limit is not None and self.limit < 0:
            raise DatasetError("--limit must not be negative")
        if not re.fullmatch(r"\w+(\.\w+)*", self.split):
            raise DatasetError(f"bad split name {self.split!r}")

    @property
    def output(self) -> str:
        """The output's folder name under `<remote>/datasets/`."""
        if self.output_name:
            if not re.fullmatch(r"[\w.-]+", self.output_name) or self.output_name.startswith("."):
                raise DatasetError(f"--output-name {self.output_name!r}: use letters, digits, '.', '_', '-'")
            return self.output_name
        name = Path(self.source.rstrip("/")).name
        base = re.sub(r"[^\w.-]+", "_", name).strip("._") or "dataset"
        digest = hashlib.sha1(f"{self.source}|{self.name}".encode()).hexdigest()[:8]
        return f"{base}-{self.name}-{self.split}-{digest}" if self.name else f"{base}-{self.split}-{digest}"

    @property
    def run(self) -> str:
        return f"{self.source} [{self.name or 'default'}/{self.split}] -> {self.output}"


def resolve_source(source: str) -> str:
    """A local path as an absolute path (so reruns from elsewhere are the same run); a path that
    does not exist is an error here, never a hub lookup."""
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise DatasetError(f"dataset {source}: no such file or directory")
    return source


def open_source(job: DatasetJob, *, offline: bool) -> Any:
    """The source as a streaming IterableDataset with raw audio (`Audio(decode=False)`)."""
    import datasets

    local = Path(job.source).exists()
    if offline and not local:
        raise DatasetError(f"dataset {job.source}: not a local folder, and offline mode forbids the hub")
    try:
        ds = datasets.load_dataset(job.source, job.name, split=job.split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "cannot open"
        reason = " ".join(str(exc).split())[:500] or type(exc).__name__
        raise DatasetError(
            f"cannot open dataset {job.source} (config {job.name or 'default'}, split {job.split}): {reason}"
        ) from None
    if ds.features is not None:
        columns = list(ds.features)
        for flag, column in (
            ("--audio-column", job.audio_column),
            ("--text-column", job.text_column),
            ("--id-column", job.id_column),
        ):
            if column is not None and column not in ds.features:
                raise DatasetError(
                    f"dataset {job.source} has no column {column!r} ({flag}); columns: {columns}"
                )
        if isinstance(ds.features[job.audio_column], datasets.Audio):
            if ds.info.builder_name == "audiofolder" and not datasets.config.TORCHCODEC_AVAILABLE:
                # datasets >= 4 encodes a folder's audio paths with torchcodec: take the paths.
                ds = ds.cast_column(job.audio_column, datasets.Value("string"))
            else:
                ds = ds.cast_column(job.audio_column, datasets.Audio(decode=False))
    return ds


def audio_payload(value: Any) -> tuple[bytes, str]:
    """(encoded audio bytes, original path) from an audio cell: the Audio feature's {bytes, path},
    raw bytes, or a path."""
    path = ""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path") or ""
        if data:
            return bytes(data), path
        if not path:
            raise ConversionError("row has no audio (neither bytes nor path)")
    elif isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), ""
    elif isinstance(value, str):
        path = value
    else:
        raise ConversionError(f"audio cell of type {type(value).__name__} is not audio")
    if Path(path).is_file():
        return Path(path).read_bytes(), path
    from datasets.utils.file_utils import xopen  # URLs inside streamed datasets (hf://, zip://...)

    try:
        with xopen(path, "rb") as fh:
            return fh.read(), path
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"cannot read audio {path}: {exc}") from None


@dataclass
class _Row:
    index: int
    id: str
    text: str | None
    src: Path | None
    dst: Path
    future: Future[AudioInfo] | None
    error: str | None = None


@dataclass
class _Pending:
    """A row on its way to the shard: being transcribed (`future`), or already settled."""

    row: _Row
    info: AudioInfo | None = None
    future: Future[Transcript] | None = None
    result: Transcript | None = None
    error: str | None = None


@dataclass
class _Boundary:
    """The source rows before `end_row` are all queued; `state` resumes the source after them."""

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
class DatasetResult:
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

    @property
    def ok(self) -> bool:
        return self.state == ArchiveState.DONE

    def summary_line(self) -> str:
        line = (
            f"{self.run}: {self.state} - {self.rows_done} source rows done ({self.rows_written} written, "
            f"{self.rows_failed} failed) in {self.shards} shards at {self.output}, {self.wall_s:.1f} s"
        )
        return line + (f"; error: {self.error}" if self.error else "")


class DatasetWorker(StagedRun):
    """A dataset streamed from its source, row by row, into Parquet shards uploaded in order;
    a resumed run continues after the last shard uploaded."""

    def __init__(
        self,
        config: PipelineConfig,
        job: DatasetJob,
        *,
        store: ProgressStore,
        transcriber_factory: Callable[[PipelineConfig], TranscriberLike],
    ) -> None:
        super().__init__(config, store, RunTally())
        self.job = job
        self.transcriber_factory = transcriber_factory
        self.prefix = f"datasets/{job.output}"
        self.scratch = config.scratch_dir / "datasets" / job.output
        self._slots = UploadSlots(MAX_SHARDS_UPLOADING, self.control)
        # One process per run: a lease on the run's row (state/lease.py), renewed on a heartbeat;
        # a process that lost it (stalled past it, taken over) stops and writes nothing more.
        self.owner = Owner(config.slurm_job_id, socket.gethostname(), os.getpid())
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
        resume = self.store.datasets.start(
            self.job.run,
            source=self.job.source,
            config_name=self.job.name,
            split=self.job.split,
            output=self.destination.url(self.prefix),
            host=self.owner.host,
            pid=self.owner.pid,
            slurm_job_id=self.owner.slurm_job_id,
            resume=self.job.resume,
            lease_s=self.config.lease_s,
            may_take=lambda row: holder_is_gone(row, self.owner),
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
            complete = self._pipeline(source, resume.rows_done, resume.shards_done)
        except BaseException as exc:
            self.store.datasets.finish(
                self.job.run, state=ArchiveState.FAILED, error=f"stopped by an error: {exc}"
            )
            raise
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        state, error = self.outcome(complete=complete)
        row = self.store.datasets.finish(self.job.run, state=state, error=error)
        self.tally.timers.log()
        return DatasetResult(
            run=self.job.run,
            state=state,
            rows_done=row["rows_done"],
            rows_written=row["rows_written"],
            rows_failed=row["rows_failed"],
            shards=row["shards_done"],
            output=self.destination.url(self.prefix),
            wall_s=time.monotonic() - started,
            error=error,
            stage_seconds=dict(self.tally.timers.seconds),
        )

    # -- stages ---------------------------------------------------------------------------
    def _pipeline(self, source: Any, start_row: int, first_shard: int) -> bool:
        decoder = open_decoder(self.transcriber_factory(self.config), DecodeOptions.of(self.config))
        # One upload thread: shards are checkpointed in order.
        uploader = self.open_uploads(max_concurrent=1)
        pool = ConversionPool(self.config.num_workers, timeout=self.config.decode_timeout)
        feed: Feed[_Row | _Boundary] = Feed(
            lambda put: self._read(source, start_row, pool, put), self, maxsize=self.config.stream_batch_size
        )
        writer = ShardWriter(dataset_features(), self.scratch / "shards", split=self.job.split)
        shard = _OpenShard(number=first_shard, first_row=start_row)
        writer.number = shard.number
        feed.start()
        inflight: deque[_Pending] = deque()  # handed to the decoder, in source order
        complete = False
        try:
            while True:
                item = feed.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None or self.control.requested or self.tally.errors():
                    writer.abort()  # the open shard's rows are redone by the next run
                    break
                if isinstance(item, _Row):
                    inflight.append(self._submit(item, decoder))
                    # Done rows behind a slow one wait in scratch: at most two decoders' worth.
                    full = len(inflight) >= 2 * self.config.process_batch_size
                    self._write_finished(inflight, writer, shard, wait=full)
                    continue
                self._write_finished(inflight, writer, shard, wait=True)
                if item.end_row > shard.first_row:  # an empty last shard is no shard
                    self._ship(writer.close_shard(), item, shard, uploader)
                    shard = _OpenShard(number=shard.number + 1, first_row=item.end_row)
                    writer.number = shard.number
                if item.last:
                    complete = True
                    break
        finally:
            self.control.event.set()
            feed.join()
            self.close_decoder(decoder)
            for pending in inflight:
                pending.row.dst.unlink(missing_ok=True)
            pool.close()
            if self.end_uploads(None) and complete and not self.tally.errors():
                self._publish_card(uploader)
            uploader.close()
        return complete

    def _read(
        self, source: Any, start_row: int, pool: ConversionPool, put: Callable[[_Row | _Boundary], None]
    ) -> None:
        """The reader thread: each row's audio to scratch and to a conversion process, in source
        order, with a boundary after every shard's last row (and after the last row of all)."""
        job = self.job
        batch = job.upload_batch_size
        index = start_row
        if job.limit is not None and index >= job.limit:
            put(_Boundary(index, None, last=True))
            return
        iterator: Iterator[dict[str, Any]] = iter(source)
        while not self.control.event.is_set():
            t0 = time.monotonic()
            try:
                record = next(iterator, None)
            except Exception as exc:  # any failure of the source ends the run
                reason = " ".join(str(exc).split())[:500] or type(exc).__name__
                raise DatasetError(f"reading {job.source} failed at row {index}: {reason}") from exc
            self.tally.timers.add("read_source", time.monotonic() - t0)
            if record is None:
                put(_Boundary(index, None, last=True))
                return
            if job.audio_column not in record:
                raise DatasetError(
                    f"dataset {job.source} has no column {job.audio_column!r} (--audio-column); "
                    f"columns: {list(record)}"
                )
            put(self._stage(record, index, pool))
            index += 1
            if job.limit is not None and index >= job.limit:
                put(_Boundary(index, None, last=True))
                return
            if (index - start_row) % batch == 0:
                put(_Boundary(index, source.state_dict()))

    def _stage(self, record: dict[str, Any], index: int, pool: ConversionPool) -> _Row:
        job = self.job
        row_id = str(record[job.id_column]) if job.id_column else str(index)
        text = record.get(job.text_column) if job.text_column else None
        dst = self.scratch / "rows" / f"{index}.flac"
        try:
            data, path = audio_payload(record[job.audio_column])
        except ConversionError as exc:
            return _Row(index, row_id, text, None, dst, None, error=str(exc))
        suffix = Path(path).suffix.lower() if re.fullmatch(r"\.\w{1,5}", Path(path).suffix) else ".bin"
        src = self.scratch / "rows" / f"{index}.src{suffix}"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        # A row with its own transcript is not decoded: its samples need not come back.
        conversion = pool.submit(convert_to_flac, str(src), str(dst), keep_samples=not text)
        return _Row(index, row_id, text, src, dst, conversion)

    def _submit(self, row: _Row, decoder: Decoder) -> _Pending:
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
            return _Pending(row, error=str(exc))
        if row.text:
            # The source's own transcript: no model, no language, no times.
            given = Transcript(
                self.job.run, row.id, "", None, 0.0, info.output_duration_s, text=str(row.text)
            )
            return _Pending(row, info, result=given)
        info, audio = take_samples(info, row.dst)
        t1 = time.monotonic()
        future = decoder.submit(audio, archive=self.job.run, member=row.id)
        self.tally.timers.add("wait_for_decoder", time.monotonic() - t1)
        return _Pending(row, info, future=future)

    def _write_finished(
        self, inflight: deque[_Pending], writer: ShardWriter, shard: _OpenShard, *, wait: bool
    ) -> None:
        """Append the rows at the head of `inflight` whose transcript is ready (all of them with
        `wait`), keeping source order."""
        while inflight and (wait or inflight[0].future is None or inflight[0].future.done()):
            pending = inflight.popleft()
            row = pending.row
            try:
                if pending.future is not None:
                    t0 = time.monotonic()
                    try:
                        pending.result = pending.future.result()
                    except TranscriptionError as exc:
                        pending.error = str(exc)
                    finally:
                        self.tally.timers.add("wait_for_transcript", time.monotonic() - t0)
                if pending.error is not None or pending.result is None or pending.info is None:
                    log.warning("row %d (id %s) failed: %s", row.index, row.id, pending.error)
                    shard.failures.append((row.index, row.id, pending.error or "no result"))
                    continue
                result = pending.result
                writer.add(
                    {
                        "id": row.id,
                        "audio": {"bytes": row.dst.read_bytes(), "path": f"{row.id}.flac"},
                        "duration_s": pending.info.output_duration_s,
                        "language": result.language,
                        "transcript": result.text,
                        **made_by_columns(result),
                        "transcript_source": "model" if pending.future is not None else "source",
                        "segments": segment_rows(result.segments),
                    }
                )
                shard.last_id = row.id
            finally:
                row.dst.unlink(missing_ok=True)

    def _ship(
        self, closed: Shard | None, boundary: _Boundary, shard: _OpenShard, uploader: AsyncRsyncStorageManager
    ) -> None:
        """Upload a finished shard and checkpoint it once rsync confirmed. A shard whose rows all
        failed has no file; its (empty) upload still goes through the queue, so that checkpoints
        stay in order."""
        relpath = f"{self.prefix}/{closed.relpath}" if closed is not None else ""
        checkpoint = ShardCheckpoint(
            shard=shard.number,
            first_row=shard.first_row,
            end_row=boundary.end_row,
            rows=closed.rows if closed is not None else 0,
            bytes=closed.bytes if closed is not None else 0,
            last_id=shard.last_id,
            remote_path=self.destination.url(relpath) if closed is not None else "",
            source_state=boundary.state,
            failures=tuple(shard.failures),
        )
        t0 = time.monotonic()
        taken = self._slots.take()  # at most two finished shards in scratch
        self.tally.timers.add("wait_for_upload_slot", time.monotonic() - t0)
        if not taken:  # stopping: the shard is written again by the next run
            if closed is not None:
                closed.path.unlink(missing_ok=True)
            return
        stage = self.scratch / f"upload-{shard.number}"
        label = f"{self.prefix} shard {shard.number} ({checkpoint.rows} rows)"
        on_finish = functools.partial(self._uploaded, checkpoint=checkpoint)
        if closed is not None:
            uploader.submit_file(closed.path, relpath, stage, label, on_finish)
        else:
            stage.mkdir(parents=True)
            uploader.submit(stage, label, on_finish)

    def _uploaded(self, job: UploadJob, checkpoint: ShardCheckpoint) -> None:
        try:
            if job.state is UploadState.DONE and not self.tally.errors():
                self.store.datasets.record_shard(self.job.run, checkpoint)
                log.info(
                    "checkpoint: shard %d uploaded, %d source rows done", checkpoint.shard, checkpoint.end_row
                )
            elif job.state is not UploadState.DONE:
                self.tally.error(f"upload of shard {checkpoint.shard} failed: {job.error}")
                self.control.event.set()
        except Exception as exc:  # noqa: BLE001 - recorded; the run ends failed and resumes here
            self.tally.error(f"checkpoint of shard {checkpoint.shard} failed: {exc}")
            self.control.event.set()
        finally:
            shutil.rmtree(job.source, ignore_errors=True)
            self._slots.give()

    def _publish_card(self, uploader: AsyncRsyncStorageManager) -> None:
        shards = [s for s in self.store.datasets.shards(self.job.run) if s["rows"] > 0]
        files = [s["remote_path"][len(self.destination.url(self.prefix)) + 1 :] for s in shards]
        card = dataset_card(
            dataset_features(),
            split=self.job.split,
            files=files,
            rows=sum(s["rows"] for s in shards),
            size=sum(s["bytes"] for s in shards),
            title=f"{self.job.source} through streaming-pipeline",
            about=[
                f"Source: `{self.job.source}` (config `{self.job.name or 'default'}`, "
                f"split `{self.job.split}`), "
                f"audio column `{self.job.audio_column}`, converted to 16 kHz mono FLAC and transcribed "
                f"with `{self.config.model}`"
                + (f" where `{self.job.text_column}` was empty." if self.job.text_column else "."),
                "Rows whose audio could not be used are listed in the progress database "
                "(`dataset_failures`), not here.",
            ],
        )
        try:
            uploader.put_text(card, f"{self.prefix}/README.md", self.scratch / "card")
        except UploadError as exc:
            self.tally.error(str(exc))

"""Re-transcribing an archive's done members from the FLACs already on the destination.

Run by an archive's worker when `retranscribe` set `PIPELINE_WORK=retranscribe` (same fan-out,
lease, logs and requeue as processing). The archive itself is not read, and no FLAC is written,
converted or uploaded: per batch of `--stream-batch-size` members the FLACs are fetched into
scratch (the next batch is fetched while this one decodes), decoded with the current settings,
and only the JSON and subtitles go back, each file replaced whole (rsync writes a temporary file
and renames it). Once rsync confirmed a batch, its members' rows take the new transcripts and the
old ones move to `transcript_history`, in one fenced transaction. A member whose FLAC is missing
or unreadable is reported and left as it was. The archive's own state is not touched: it stays
`done`; a stopped run leaves the rest for the next (the members still stale).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import time
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PipelineConfig, subtitle_formats
from ..errors import ConversionError, LeaseLost, TranscriptionError, UploadError
from ..stages.asr.factory import open_decoder
from ..stages.asr.options import DecodeOptions
from ..stages.asr.protocol import Decoder, TranscriberLike
from ..stages.audio import load_16k
from ..stages.subtitles import write_beside
from ..stages.transcript import Transcript
from ..stages.upload import UploadJob, UploadState
from ..state.lease import ArchiveLease, Owner
from ..state.records import ArchiveKey, MemberRecord
from ..state.states import MemberStatus
from ..state.store import ProgressStore
from ..state.transcripts import StaleMember
from .skeleton import Feed, RunTally, StagedRun

log = logging.getLogger(__name__)


@dataclass
class _Fetched:
    members: list[StaleMember]
    folder: Path  # the destination's tree, these members' FLACs only
    missing: set[str]  # members whose FLAC the destination does not have


@dataclass(frozen=True)
class RetranscribeResult:
    archive: str
    counts: dict[str, int]
    errors: list[str]
    interrupted: bool
    wall_s: float
    audio_s: float  # of the members re-transcribed
    stage_seconds: dict[str, float]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.interrupted

    def summary_line(self) -> str:
        c = self.counts
        return (
            f"{self.archive}: re-transcribed {c.get('done', 0)}, left as they were {c.get('left', 0)}, "
            f"failed {c.get('failed', 0)} in {self.wall_s:.1f}s"
            + (" (interrupted)" if self.interrupted else "")
        )


class RetranscribeWorker(StagedRun):
    """One archive's stale transcripts made again with the current model and settings."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        key: ArchiveKey,
        path: str,
        store: ProgressStore,
        transcriber_factory: Any,
    ) -> None:
        super().__init__(config, store, RunTally("done", "left", "failed"))
        self.key = key
        self.path = path
        self.transcriber_factory = transcriber_factory
        self._formats = subtitle_formats(config.subtitles)
        self.scratch = config.scratch_dir / "retranscribe" / key.day.isoformat() / key.slot
        self.job_scratch = self.scratch / f"run-{socket.gethostname()}-{os.getpid()}"

    def record_interrupted(self, reason: str) -> None:
        """Nothing to record: the members not done are still stale, which is what resumes them."""
        log.warning("%s: %s", self.key.archive, reason)

    def run(self) -> RetranscribeResult:
        lease = ArchiveLease(
            self.store,
            self.key,
            path=self.path,
            owner=Owner(self.config.slurm_job_id, socket.gethostname(), os.getpid()),
            lease_s=self.config.lease_s,
            on_lost=self.request_stop,
        )
        started = time.monotonic()
        with lease:
            try:
                self._run()
            except LeaseLost:
                raise
            finally:
                shutil.rmtree(self.scratch, ignore_errors=True)
        return RetranscribeResult(
            self.key.archive,
            self.tally.counts(),
            self.tally.errors(),
            self.control.requested,
            time.monotonic() - started,
            self.tally.audio_s,
            dict(self.tally.timers.seconds),
        )

    def _run(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.job_scratch.mkdir(parents=True)
        transcriber: TranscriberLike = self.transcriber_factory(self.config)
        decoder = open_decoder(transcriber, DecodeOptions.of(self.config))
        try:
            made = decoder.provenance
            todo = self.store.transcripts.stale(
                self.key.archive, key=made.key, only_model=self.config.only_model
            )
            log.info(
                "%s: %d members to re-transcribe with %s (%s)",
                self.key.archive,
                len(todo),
                made.model,
                made.key,
            )
            if todo:
                self._retranscribe(todo, decoder)
        finally:
            if self.control.requested:
                decoder.cancel_pending()
            self.close_decoder(decoder)

    def _retranscribe(self, todo: list[StaleMember], decoder: Decoder) -> None:
        uploader = self.open_uploads(max_concurrent=1)
        batch = self.config.stream_batch_size
        chunks = [todo[i : i + batch] for i in range(0, len(todo), batch)]
        feed: Feed[_Fetched] = Feed(lambda put: self._fetch_all(chunks, put), self, maxsize=1).start()
        try:
            number = 0
            while not self.control.requested:
                item = feed.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self._batch(item, number, decoder)
                number += 1
        finally:
            self.end_uploads(None)
            feed.join()
            uploader.close()

    # -- the reader: FLACs from the destination -------------------------------------------------
    def _fetch_all(self, chunks: list[list[StaleMember]], put: Any) -> None:
        assert self.uploader is not None
        for number, members in enumerate(chunks):
            if self.control.requested:
                return
            folder = self.job_scratch / f"fetch-{number}"
            relpaths = {m.member: self.destination.relpath(m.remote_path) for m in members}
            # the FLACs, and the JSONs for what the first run recorded of the source audio
            wanted = [q for p in relpaths.values() for q in (p, str(Path(p).with_suffix(".json")))]
            there = self.uploader.existing(wanted, self.job_scratch / f"check-{number}")
            present = [p for p in wanted if p in there]
            t0 = time.monotonic()
            if present:
                self.uploader.fetch(
                    present, folder, label=f"{self.key.archive}: {len(members)} members' FLACs"
                )
            self.tally.timers.add("fetch", time.monotonic() - t0)
            missing = {m for m, p in relpaths.items() if p not in there}
            put(_Fetched(members, folder, missing))

    # -- decode, stage, upload --------------------------------------------------------------------
    def _batch(self, fetched: _Fetched, number: int, decoder: Decoder) -> None:
        futures: dict[str, Future[Transcript]] = {}
        for m in fetched.members:
            if m.member in fetched.missing:
                self._leave(m, "its FLAC is not on the destination")
                continue
            flac = fetched.folder / self.destination.relpath(m.remote_path)
            try:
                audio = load_16k(flac)
            except (ConversionError, OSError, RuntimeError) as exc:
                self._leave(m, f"its FLAC on the destination cannot be read: {exc}")
                continue
            futures[m.member] = decoder.submit(audio, archive=self.key.archive, member=m.member)
        stage = self.job_scratch / f"stage-{number}"
        records: list[MemberRecord] = []
        audio_s = 0.0
        for m in fetched.members:
            future = futures.get(m.member)
            if future is None:
                continue
            try:
                result = self.transcript(future, decoder)
            except CancelledError:
                self.tally.count("left", 1)
                continue
            except TranscriptionError as exc:
                self.tally.error(f"{m.member}: {exc}")
                self.tally.count("failed", 1)
                continue
            records.append(self._stage(m, fetched.folder, stage, result))
            audio_s += m.duration_s
        shutil.rmtree(fetched.folder, ignore_errors=True)
        if records:
            assert self.uploader is not None
            self.uploader.submit(
                stage,
                label=f"{self.key.archive} re-transcribed batch {number} ({len(records)} members)",
                on_finish=lambda job: self._uploaded(job, records, audio_s),
            )

    def _stage(self, m: StaleMember, fetched: Path, stage: Path, result: Transcript) -> MemberRecord:
        """The new JSON (and subtitles) under the FLAC's own relative path; the JSON keeps the
        source audio's description the first run wrote."""
        relpath = Path(self.destination.relpath(m.remote_path))
        old = fetched / relpath.with_suffix(".json")
        if old.is_file():
            try:
                source = Transcript.from_json(json.loads(old.read_text())).source
                result = dataclasses.replace(result, source=source)
            except (ValueError, KeyError):
                pass
        target = stage / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        subtitles = write_beside(target, result, self._formats)  # the FLAC itself is not staged
        return MemberRecord(
            m.member,
            MemberStatus.DONE,
            timestamps=self.config.timestamps,
            subtitles=subtitles,
            **result.record_fields(),
        )

    def _uploaded(self, job: UploadJob, records: list[MemberRecord], audio_s: float) -> None:
        try:
            if job.state is UploadState.DONE:
                changed = self.store.transcripts.replace(self.key.archive, records)
                self.tally.count("done", changed, audio_s=audio_s)
            elif job.state is UploadState.WITHDRAWN:
                self.tally.count("left", len(records))
            else:
                self.tally.error(f"upload failed: {job.error}")
                self.tally.count("failed", len(records))
        except (UploadError, LeaseLost) as exc:
            self.tally.error(str(exc))
        finally:
            shutil.rmtree(job.source, ignore_errors=True)

    def _leave(self, m: StaleMember, reason: str) -> None:
        log.warning("%s: %s left as it was: %s", self.key.archive, m.member, reason)
        self.tally.error(f"{m.member}: {reason}")
        self.tally.count("left", 1)

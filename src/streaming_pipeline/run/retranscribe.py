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
import functools
import json
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import PipelineConfig
from ..errors import ConfigError, ConversionError, LeaseLost, TranscriptionError, UploadError
from ..member_files import MemberFiles
from ..stages.asr.factory import open_decoder
from ..stages.asr.options import DecodeOptions, Timestamps
from ..stages.asr.protocol import CPU, Decoder, DecoderStats, TranscriberFactory
from ..stages.asr.provenance import planned
from ..stages.audio import load_16k
from ..stages.outputs import write_beside
from ..stages.speakers import SpeakerOptions, SpeakerStage, with_speakers
from ..stages.upload import UploadJob, UploadState
from ..state.lease import ArchiveLease
from ..state.records import ArchiveKey, MemberRecord
from ..state.states import MemberStatus
from ..state.store import ProgressStore
from ..state.transcripts import StaleMember
from ..transcript import Provenance, Transcript
from .engine import BatchEnd, Lifecycle, Outcome, Upload
from .job_environment import JobEnvironment
from .skeleton import RunTally, StagedRun

log = logging.getLogger(__name__)


@dataclass
class _Fetched:
    """A stale member whose FLAC was fetched into `folder` (the destination's tree) with its
    batch's, or `missing` from the destination (reader thread)."""

    member: StaleMember
    batch: int
    folder: Path
    missing: bool


@dataclass
class _OpenBatch:
    """The batch the finisher is staging (finisher thread only)."""

    number: int
    records: list[MemberRecord] = field(default_factory=list)
    audio_s: float = 0.0


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
    """One archive's stale transcripts made again with the current model and settings; `run`
    is the run's main thread, its work (`RetranscribeWork`) names the others."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        key: ArchiveKey,
        path: str,
        store: ProgressStore,
        transcriber_factory: TranscriberFactory,
        environment: JobEnvironment | None = None,
    ) -> None:
        super().__init__(config, store, RunTally("done", "left", "failed"))
        self.key = key
        self.path = path
        self.environment = environment or JobEnvironment.of()
        self.transcriber_factory = transcriber_factory
        self.options = DecodeOptions.of(config.decode)  # decided once for the run, passed down
        self.formats = config.subtitles
        speaker_options = SpeakerOptions.of(config.decode)  # loaded before any member is fetched
        if config.speakers_only and speaker_options is None:
            raise ConfigError("--speakers-only adds speakers: it cannot run with --no-speakers")
        self.speakers = SpeakerStage(speaker_options) if speaker_options else None
        self.scratch = config.scratch_dir / "retranscribe" / key.day.isoformat() / key.slot
        self.job_scratch = self.scratch / self.environment.scratch_name

    def record_interrupted(self, reason: str) -> None:
        """Nothing to record: the members not done are still stale, which is what resumes them."""
        log.warning("%s: %s", self.key.archive, reason)

    def run(self) -> RetranscribeResult:
        lease = ArchiveLease(
            self.store,
            self.key,
            path=self.path,
            owner=self.environment.owner,
            lease_s=self.config.lease_s,
            on_lost=self.request_stop,
        )
        started = time.monotonic()
        with lease:
            try:
                self._run()
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
        decoder: Decoder = (
            KeptWords(planned(self.options))  # no Whisper: the words stay
            if self.config.speakers_only
            else open_decoder(self.transcriber_factory(self.options.load), self.options)
        )
        try:
            speakers = self.speakers.options if self.speakers else None
            made = with_speakers(
                decoder.provenance, speakers, self.speakers.model.info.sha256 if self.speakers else None
            )
            todo = self.store.transcripts.stale(
                self.key.archive, key=made.key, only_model=self.config.only_model,
                speaker_model=made.speaker_model if self.config.speakers_only else None,
            )  # fmt: skip
            what = (
                f"speakers of {made.speaker_model}"
                if self.config.speakers_only
                else f"{made.model} ({made.key})"
            )
            log.info("%s: %d members to re-transcribe with %s", self.key.archive, len(todo), what)
            if todo:
                self._retranscribe(todo, decoder)
        finally:
            if self.control.requested:
                decoder.cancel_pending()
            self.close_decoder(decoder)

    def _retranscribe(self, todo: list[StaleMember], decoder: Decoder) -> None:
        uploader = self.open_uploads(max_concurrent=1)
        batch = self.config.stream_batch_size
        work = RetranscribeWork(self, [todo[i : i + batch] for i in range(0, len(todo), batch)])
        try:
            Lifecycle(self, work, decoder, read_ahead=batch + 1, hand_ahead=batch).run_all()
        finally:
            self.end_uploads(None)
            uploader.close()


class KeptWords:
    """`--speakers-only`'s decoder, which loads no model: each member's words are its JSON's on
    the destination (`RetranscribeWork.submit` settles it from there), so nothing is decoded.
    Called from the run's main thread."""

    device = CPU

    def __init__(self, provenance: Provenance) -> None:
        self.provenance = provenance  # what the run's stale query and log name; the words keep theirs

    def submit(self, audio: np.ndarray, *, archive: str, member: str) -> Future[Transcript]:
        raise TranscriptionError(f"{archive}: {member}: --speakers-only decodes nothing")

    def cancel_pending(self) -> int:
        return 0

    def stats(self) -> DecoderStats:
        return DecoderStats()

    def close(self) -> None:
        pass


class RetranscribeWork:
    """Stale members through the lifecycle; each method names the thread that runs it."""

    def __init__(self, worker: RetranscribeWorker, chunks: list[list[StaleMember]]) -> None:
        self.worker = worker
        self.key = worker.key
        self.tally = worker.tally
        self.chunks = chunks
        self._open: _OpenBatch | None = None  # finisher thread

    # -- reader thread: FLACs from the destination -------------------------------------------
    def produce(self, put: Callable[[_Fetched | BatchEnd[int]], None]) -> None:
        """Per batch, its FLACs (and JSONs, for what the first run recorded of the source
        audio) fetched from the destination in one rsync; the next is fetched while one decodes."""
        worker, uploader = self.worker, self.worker.uploader
        assert uploader is not None
        for number, members in enumerate(self.chunks):
            if worker.control.event.is_set():
                return
            folder = self._dir("fetch", number)
            relpaths = {m.member: worker.destination.relpath(m.remote_path) for m in members}
            wanted = [q for p in relpaths.values() for q in MemberFiles.of_flac(p).names()]
            there = uploader.rsync.existing(wanted, self._dir("check", number))
            present = [p for p in wanted if p in there]
            t0 = time.monotonic()
            if present:
                uploader.rsync.fetch(
                    present, folder, label=f"{self.key.archive}: {len(members)} members' FLACs"
                )
            self.tally.timers.add("fetch", time.monotonic() - t0)
            for m in members:
                put(_Fetched(m, number, folder, missing=relpaths[m.member] not in there))
            put(BatchEnd(number))

    # -- main thread --------------------------------------------------------------------------
    def submit(self, fetched: _Fetched, decoder: Decoder) -> Future[Transcript] | None:
        """The FLAC's samples to the decoder; a member whose FLAC is missing or unreadable is
        left as it was (None)."""
        m = fetched.member
        if fetched.missing:
            self._leave(m, "its FLAC is not on the destination")
            return None
        flac = fetched.folder / self.worker.destination.relpath(m.remote_path)
        if self.worker.config.speakers_only:  # the words stay: the stage adds only the speakers
            return self._transcript_of(m, fetched)
        try:
            audio = load_16k(flac)
        except (ConversionError, OSError, RuntimeError) as exc:
            self._leave(m, f"its FLAC on the destination cannot be read: {exc}")
            return None
        return decoder.submit(audio, archive=self.key.archive, member=m.member)

    def _transcript_of(self, m: StaleMember, fetched: _Fetched) -> Future[Transcript] | None:
        """`--speakers-only`: the member's transcript as its JSON on the destination has it."""
        files = MemberFiles.of_flac(fetched.folder / self.worker.destination.relpath(m.remote_path))
        try:
            transcript = Transcript.from_json(json.loads(Path(files.json).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._leave(m, f"its JSON on the destination cannot be read: {exc}")
            return None
        done: Future[Transcript] = Future()
        done.set_result(transcript)
        return done

    def leave(self, fetched: _Fetched) -> None:
        self.tally.count("left", 1)

    def _leave(self, m: StaleMember, reason: str) -> None:
        log.warning("%s: %s left as it was: %s", self.key.archive, m.member, reason)
        self.tally.error(f"{m.member}: {reason}")
        self.tally.count("left", 1)

    # -- finisher thread ----------------------------------------------------------------------
    def finish(self, fetched: _Fetched, outcome: Outcome) -> None:
        if self._open is None:
            self._open = _OpenBatch(fetched.batch)
        opened = self._open
        m = fetched.member
        if isinstance(outcome, CancelledError):
            self.tally.count("left", 1)
        elif isinstance(outcome, TranscriptionError):
            self.tally.error(f"{m.member}: {outcome}")
            self.tally.count("failed", 1)
        elif isinstance(outcome, Transcript):
            opened.records.append(self._stage(m, fetched.folder, self._dir("stage", opened.number), outcome))
            opened.audio_s += m.duration_s

    def _stage(self, m: StaleMember, fetched: Path, stage: Path, result: Transcript) -> MemberRecord:
        """The new JSON (and subtitles) under the FLAC's own relative path; the JSON keeps the
        source audio's description the first run wrote."""
        relpath = Path(self.worker.destination.relpath(m.remote_path))
        old = fetched / MemberFiles.of_flac(relpath).json
        if old.is_file():
            try:
                source = Transcript.from_json(json.loads(old.read_text())).source
                result = dataclasses.replace(result, source=source)
            except (ValueError, KeyError):
                pass
        if self.worker.speakers is not None:
            keep_words = self.worker.options.timestamps is Timestamps.WORD
            if self.worker.config.speakers_only:  # its words as they were: kept where it had them
                keep_words = any(s.words for s in result.segments)
            result = self.worker.speakers.attribute_or_skip(result, fetched / relpath, keep_words=keep_words)
        target = stage / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        subtitles = write_beside(  # the FLAC itself is not staged
            target, result, self.worker.formats, speaker_prefix=self.worker.config.srt_speakers
        )
        return MemberRecord.transcribed(
            m.member,
            result,
            status=MemberStatus.DONE,
            subtitles=subtitles,
        )

    def close(self, end: BatchEnd[int] | None) -> Upload | None:
        """The batch's new JSONs and subtitles, to replace the old ones on the destination."""
        opened, self._open = self._open, None
        if opened is None:
            return None
        shutil.rmtree(self._dir("fetch", opened.number), ignore_errors=True)
        if not opened.records:
            return None
        stage = self._dir("stage", opened.number)
        label = f"{self.key.archive} re-transcribed batch {opened.number} ({len(opened.records)} members)"
        return Upload(stage, label, functools.partial(self._uploaded, opened, stage))

    def _dir(self, what: str, batch: int) -> Path:
        """A batch's scratch folder: `fetch` (its FLACs from the destination), `stage` (its new
        JSONs), `check` (the existence check's)."""
        return self.worker.job_scratch / f"{what}-{batch}"

    # -- upload thread ------------------------------------------------------------------------
    def _uploaded(self, opened: _OpenBatch, stage: Path, job: UploadJob | None) -> None:
        """The members' rows take the new transcripts once rsync confirmed them (the old ones
        go to transcript_history), in one fenced transaction."""
        records = opened.records
        try:
            if job is not None and job.state is UploadState.DONE:
                changed = self.worker.store.transcripts.replace(self.key.archive, records)
                self.tally.count("done", changed, audio_s=opened.audio_s)
            elif job is None or job.state is UploadState.WITHDRAWN:
                self.tally.count("left", len(records))
            else:
                self.tally.error(f"upload failed: {job.error}")
                self.tally.count("failed", len(records))
        except (UploadError, LeaseLost) as exc:
            self.tally.error(str(exc))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

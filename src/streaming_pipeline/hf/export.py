"""`export DATE`: a day's done members as Parquet shards that `datasets` streams.

The audio is read back from the destination (the FLAC and the JSON of each member, as the workers
uploaded them), a chunk at a time and one chunk ahead, so scratch holds two chunks and one shard's
row group whatever the size of the day. Transcripts, languages and durations come from
PostgreSQL, the segments from the uploaded JSON. Without --out the shards go to
`<remote>/<DATE>/parquet/` through the async rsync manager as soon as each is full; the card goes
last, naming exactly the shards of this export.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..destination import Rsync
from ..errors import ConfigError, DatasetError, UploadError
from ..member_files import MemberFiles
from ..stages.upload import UploadJob, Uploads, UploadState
from ..state.store import ProgressStore
from ..transcript import Transcript
from .shards import Shard, ShardWriter, dataset_card, export_features, made_by_columns, segment_rows

log = logging.getLogger(__name__)

SPLIT = "train"
FETCH_ROWS = 200  # members read back from the destination per rsync
MAX_SHARDS_UPLOADING = 2


@dataclass(frozen=True)
class ExportResult:
    day: dt.date
    output: str
    rows: int
    shards: list[str]
    audio_s: float


class DayExporter:
    def __init__(
        self,
        config: PipelineConfig,
        store: ProgressStore,
        day: dt.date,
        *,
        out: Path | None,
        shard_rows: int,
        shard_size: int,
    ) -> None:
        if shard_rows < 1:
            raise ConfigError("--shard-rows must be at least 1")
        self.config = config
        self.store = store
        self.day = day
        self.out = out
        self.shard_rows = shard_rows
        self.shard_size = shard_size
        self.scratch = config.scratch_dir / "export" / day.isoformat()
        self.prefix = f"{day.isoformat()}/parquet"  # under the destination, without --out
        self.uploads = Uploads.of(config.destination, max_concurrent=1)
        self.rsync: Rsync = self.uploads.rsync
        self.destination = self.rsync.destination
        self._slots = threading.BoundedSemaphore(MAX_SHARDS_UPLOADING)
        self._errors: list[str] = []
        self._shards: list[Shard] = []

    @property
    def output(self) -> str:
        return str(self.out) if self.out is not None else self.destination.url(self.prefix)

    def run(self) -> ExportResult:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        target = self.out if self.out is not None else self.scratch / "shards"
        writer = ShardWriter(
            export_features(),
            target,
            split=SPLIT,
            on_close=self._closed,
            max_rows=self.shard_rows,
            max_bytes=self.shard_size,
        )
        rows = 0
        audio_s = 0.0
        fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch")
        try:
            chunks = self.store.members.iter_done(self.day, chunk=FETCH_ROWS)
            pending = self._fetch_next(fetcher, chunks, 0)
            number = 0
            while pending is not None:
                members, folder = pending.result()
                number += 1
                pending = self._fetch_next(fetcher, chunks, number)  # the next chunk, while we write
                for member in members:
                    writer.add(self._row(member, folder))
                    audio_s += member["duration_s"] or 0.0
                rows += len(members)
                shutil.rmtree(folder, ignore_errors=True)
                if self._errors:
                    break
            if rows == 0:
                raise DatasetError(f"no done members for {self.day}: nothing to export")
            if not self._errors:
                writer.close_shard()
            self.uploads.wait()
            if self._errors:
                raise UploadError("; ".join(self._errors), returncode=None, retryable=False)
            files = [s.relpath for s in self._shards]
            self._publish_card(self._card(files, rows, audio_s), files)
        finally:
            fetcher.shutdown(wait=True, cancel_futures=True)
            self.uploads.wait()
            self.uploads.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        log.info("exported %d rows of %s in %d shards to %s", rows, self.day, len(files), self.output)
        return ExportResult(self.day, self.output, rows, files, audio_s)

    def _card(self, files: list[str], rows: int, audio_s: float) -> str:
        return dataset_card(
            export_features(),
            split=SPLIT,
            files=files,
            rows=rows,
            size=sum(s.bytes for s in self._shards),
            title=f"streaming-pipeline export of {self.day}",
            about=[
                f"The {rows} members of {self.day} that were `done` in the progress database at export "
                f"time ({audio_s / 3600:.3f} h of audio), one row per member, ordered by archive and member.",
                "Columns: `id` (`<archive>/<member>`), `day`, `slot`, `archive`, `member`, `audio`, "
                "`duration_s`, `language`, `transcript`, `segments` (faster-whisper segments, each "
                "with its `words` where the transcript was timed by word).",
            ],
        )

    # -- reading back ---------------------------------------------------------------------
    def _fetch_next(
        self, pool: ThreadPoolExecutor, chunks: Any, number: int
    ) -> Future[tuple[list[dict[str, Any]], Path]] | None:
        members = next(chunks, None)
        if members is None:
            return None
        return pool.submit(self._fetch, members, self.scratch / f"fetch-{number}")

    def _fetch(self, members: list[dict[str, Any]], folder: Path) -> tuple[list[dict[str, Any]], Path]:
        relpaths = []
        for m in members:
            flac = self.destination.relpath(m["remote_path"])
            m["relpath"] = flac
            relpaths += MemberFiles.of_flac(flac).names()
        self.rsync.fetch(relpaths, folder, label=f"read back {len(members)} members")
        return members, folder

    def _row(self, m: dict[str, Any], folder: Path) -> dict[str, Any]:
        flac = folder / m["relpath"]
        sidecar = folder / MemberFiles.of_flac(m["relpath"]).json
        transcript = Transcript.from_json(json.loads(sidecar.read_text(encoding="utf-8")))
        return {
            "id": f"{m['archive']}/{m['member']}",
            "day": self.day,
            "slot": m["slot"],
            "archive": m["archive"],
            "member": m["member"],
            "audio": {"bytes": flac.read_bytes(), "path": m["relpath"]},
            "duration_s": m["duration_s"],
            "language": m["language"],
            "transcript": m["transcript"],
            **made_by_columns(transcript),
            "segments": segment_rows(transcript.segments),
        }

    # -- writing out ----------------------------------------------------------------------
    def _closed(self, shard: Shard) -> None:
        self._shards.append(shard)
        if self.out is not None:
            return
        self._slots.acquire()  # at most two finished shards in scratch
        relpath = f"{self.prefix}/{shard.relpath}"
        stage = self.scratch / f"upload-{shard.number}"
        self.uploads.submit_file(shard.path, relpath, stage, label=relpath, on_finish=self._uploaded)

    def _uploaded(self, job: UploadJob) -> None:
        if job.state is not UploadState.DONE:
            self._errors.append(f"upload of {job.label} failed: {job.error}")
        shutil.rmtree(job.source, ignore_errors=True)
        self._slots.release()

    def _publish_card(self, card: str, files: list[str]) -> None:
        if self.out is not None:
            (self.out / "README.md").write_text(card, encoding="utf-8")
            keep = set(files)
            for stale in sorted((self.out / "data").glob(f"{SPLIT}-*.parquet")):
                if f"data/{stale.name}" not in keep:  # a previous, larger export's
                    stale.unlink()
            return
        self.uploads.put_text(card, f"{self.prefix}/README.md", self.scratch / "card")

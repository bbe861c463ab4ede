"""The rows that cross from the workers to PostgreSQL: typed, frozen, checked on the way in."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..transcript import Provenance, Speaker, Transcript
from .states import MemberStatus

MEMBER_COLUMNS = (
    "status",
    "size_bytes",
    "sample_rate",
    "channels",
    "duration_s",
    "transcript",
    "language",
    "language_probability",
    "remote_path",
    "error",
    "audio_reader",
    "full_name",
    "fallback",
    "timestamps",
    "subtitles",
    "model",
    "provenance",
    "transcript_key",
    "transcribed_at",
    "searchable_segments",
)
DAY_COLUMNS = frozenset(
    {"state", "archives", "submitted", "executor", "array_job_id", "finalize_job_id", "submitted_at",
     "finalized_at", "summary"}
)  # fmt: skip


class TimedWord(Protocol):
    """A timed word as the decoders return it (transcript.py's Word)."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def word(self) -> str: ...


class TimedSegment(Protocol):
    """A timed segment as the decoders return it (transcript.py's Segment)."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...
    @property
    def words(self) -> Sequence[TimedWord] | None: ...
    @property
    def language(self) -> str | None: ...
    @property
    def speaker(self) -> str | None: ...


@dataclass(frozen=True)
class MemberRecord:
    member: str
    status: MemberStatus
    size_bytes: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    transcript: str | None = None
    language: str | None = None
    language_probability: float | None = None
    remote_path: str | None = None
    error: str | None = None
    audio_reader: str | None = None  # the audio library that read the source: soundfile or pyav
    full_name: str | None = None
    fallback: bool | None = None
    timestamps: str | None = None  # none, segment or word
    subtitles: str | None = None  # the subtitle formats written beside the FLAC ("srt,vtt")
    model: str | None = None  # the model that made the transcript, as named
    provenance: Provenance | None = None  # what made the transcript (jsonb: Provenance.as_json())
    transcribed_at: dt.datetime | None = None
    searchable_segments: int | None = None  # how many of `segments` the search holds (state/segments.py)
    # the transcript's segments, written to `segments` in the member row's transaction (no column)
    segments: Sequence[TimedSegment] = field(default=(), repr=False)
    # its speakers with their centroids, written to `member_speakers` with the segments (None:
    # speakers were not attributed, and any recorded before are left as they were)
    speakers: Sequence[Speaker] | None = field(default=None, repr=False)

    @property
    def transcript_key(self) -> str | None:
        """Provenance.key: equal for transcripts made the same way."""
        return self.provenance.key if self.provenance is not None else None

    @classmethod
    def transcribed(
        cls,
        member: str,
        transcript: Transcript,
        *,
        status: MemberStatus = MemberStatus.UPLOADING,
        **fields: Any,
    ) -> MemberRecord:
        """A member's row with its transcript and what made it; `fields` are the rest of its
        columns (size, audio, remote path...)."""
        return cls(
            member,
            status,
            transcript=transcript.text,
            language=transcript.language,
            language_probability=transcript.language_probability,
            fallback=transcript.fallback,
            model=transcript.model,
            provenance=transcript.provenance,
            timestamps=transcript.provenance.timestamps if transcript.provenance else None,
            transcribed_at=dt.datetime.now(dt.UTC),
            segments=transcript.segments,  # made searchable with the row (state/segments.py)
            searchable_segments=len(transcript.segments),
            speakers=transcript.speakers,
            **fields,
        )

    def __post_init__(self) -> None:
        # A header may declare any size (2**66 in base-256); bigint holds what a disk can. The
        # declared size is in the rejection's reason.
        if self.size_bytes is not None and not -(2**63) <= self.size_bytes < 2**63:
            object.__setattr__(self, "size_bytes", None)


@dataclass(frozen=True)
class StageTiming:
    """One stage of one stream batch, in unix seconds."""

    batch: int
    stage: str
    started: float
    ended: float
    members: int = 0
    audio_s: float = 0.0
    bytes_read: int | None = None


@dataclass(frozen=True)
class ShardCheckpoint:
    """A process-dataset shard whose upload rsync confirmed: source rows [first_row, end_row)."""

    shard: int
    first_row: int
    end_row: int
    rows: int
    bytes: int
    last_id: str | None
    remote_path: str
    source_state: dict[str, Any] | None
    failures: tuple[tuple[int, str | None, str], ...] = ()  # (row index, id, error)


@dataclass(frozen=True)
class DatasetResume:
    rows_done: int
    shards_done: int
    last_id: str | None
    source_state: dict[str, Any] | None
    state: str
    lease_token: int = 0


@dataclass(frozen=True)
class ArchiveKey:
    archive: str
    day: dt.date
    slot: str

    @classmethod
    def of(cls, day: dt.date, archive_path: Path, slot: str) -> ArchiveKey:
        """An archive is named by its day and file name (`2025-01-25/06_00.tar.xz`)."""
        return cls(archive=f"{day.isoformat()}/{archive_path.name}", day=day, slot=slot)


@dataclass(frozen=True)
class Owner:
    """A process that holds, or asks for, a lease (run/job_environment.py builds it)."""

    slurm_job_id: str | None
    host: str
    pid: int

    def describe(self) -> str:
        return Holder(self.slurm_job_id, self.host, self.pid).describe()


@dataclass(frozen=True)
class Holder:
    """Who a row's lease names: its last or current holder, as the row records it."""

    slurm_job_id: str | None
    host: str | None
    pid: int | None
    lease_until: dt.datetime | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any] | None) -> Holder:
        row = row or {}
        return cls(row.get("slurm_job_id"), row.get("host"), row.get("pid"), row.get("lease_until"))

    def describe(self) -> str:
        job = f"job {self.slurm_job_id}" if self.slurm_job_id else "a job outside Slurm"
        return f"{job} on {self.host or '?'} (pid {self.pid or '?'})"

    def describe_lease(self) -> str:
        until = f" (lease until {self.lease_until:%Y-%m-%d %H:%M:%S %Z})" if self.lease_until else ""
        return self.describe() + until


@dataclass(frozen=True)
class Claim:
    """What claiming a lease found: the new token (None: a live holder keeps it), the row's
    holder before the claim, and whether that holder's lease had not expired."""

    token: int | None
    holder: Holder
    was_leased: bool
    stopping: bool = False  # the live holder was asked to stop (`interrupted`): its lease ends soon


@dataclass(frozen=True)
class ArchiveSummary:
    """An archive's members by outcome, and the audio done (the worker's result reads it)."""

    done: int
    failed: int
    rejected: int
    pending: int
    audio_s: float


@dataclass(frozen=True)
class DatasetRun:
    """A process-dataset run as its row names it: the source read and where its shards go."""

    run: str
    source: str
    config_name: str | None
    split: str
    output: str


@dataclass(frozen=True)
class DatasetTotals:
    """A dataset run's row once finished."""

    rows_done: int
    rows_written: int
    rows_failed: int
    shards_done: int


@dataclass(frozen=True)
class ShardRow:
    """An uploaded shard as `dataset_shards` records it."""

    shard: int
    rows: int
    bytes: int
    remote_path: str


@dataclass(frozen=True)
class ArchiveStatus:
    """A row of the `archive_status` view: an archive's state, its members' counts and its last
    or current holder, as `status`, the day plan and the finalize job read it."""

    day: dt.date
    slot: str
    archive: str
    state: str  # an ArchiveState; "running?" in a report when the lease expired
    live: bool  # a lease that has not expired
    done: int
    failed: int
    rejected: int
    uploading: int
    audio_hours: float
    elapsed_s: float | None
    members_seen: int | None
    bytes_read: int | None
    bytes_total: int | None
    slurm_job_id: str | None
    host: str | None
    pid: int | None
    restarts: int
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    lease_until: dt.datetime | None
    lease_token: int
    lease_left_s: float | None
    error: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ArchiveStatus:
        """PostgreSQL's numerics as floats; a column the view gained and this type lacks is an error."""
        values = dict(row)
        for name in ("audio_hours", "elapsed_s", "lease_left_s"):
            if values[name] is not None:
                values[name] = float(values[name])
        return cls(**values)

    @property
    def x_realtime(self) -> float | None:
        return x_realtime(self.audio_hours, self.elapsed_s)

    @property
    def owner(self) -> str:
        return owner_label(self.host, self.slurm_job_id, self.pid)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in asdict(self).items():
            out[name] = value.isoformat() if isinstance(value, dt.date) else value
        out["x_realtime"] = self.x_realtime
        return out


def x_realtime(audio_hours: float, elapsed_s: float | None) -> float | None:
    """Audio seconds per wall second of the runs so far (an archive's, a day's archives')."""
    return round(audio_hours * 3600 / elapsed_s, 2) if elapsed_s else None


def owner_label(host: str | None, slurm_job_id: str | None, pid: int | None) -> str:
    """`job@host` (a worker outside Slurm: `pid@host`) of an archive's last or current holder."""
    if not host:
        return "-"
    return f"{slurm_job_id or pid or '?'}@{host}"

"""The rows that cross from the workers to PostgreSQL: typed, frozen, checked on the way in."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

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
    "decoder",
    "full_name",
    "fallback",
    "timestamps",
    "subtitles",
)
DAY_COLUMNS = frozenset(
    {"state", "archives", "submitted", "executor", "array_job_id", "finalize_job_id", "submitted_at",
     "finalized_at", "summary"}
)  # fmt: skip


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
    decoder: str | None = None
    full_name: str | None = None
    fallback: bool | None = None
    timestamps: str | None = None  # none, segment or word
    subtitles: str | None = None  # the subtitle formats written beside the FLAC ("srt,vtt")

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

"""The day report's queries (status/report.py shapes and draws what they return), as typed rows.

Aggregated in PostgreSQL, so the report stays small however many members a day has: stage
timings per run and stage, GPU samples per host and minute, the duration histogram counted
here, and the table of failures capped. Read-only: a monitoring role can run them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from .records import ArchiveStatus
from .store import ProgressStore

_FILTER = "day = ANY(%(days)s) AND (%(archive)s::text IS NULL OR archive = %(archive)s)"
_RUN_FILTER = "r.day = ANY(%(days)s) AND (%(archive)s::text IS NULL OR r.archive = %(archive)s)"


@dataclass(frozen=True)
class RunRow:
    """One run of a worker on an archive (`archive_runs`)."""

    id: int
    archive: str
    host: str | None
    slurm_job_id: str | None
    restarts: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    state: str
    error: str | None
    audio_s: float | None


@dataclass(frozen=True)
class StageSpan:
    """One batch's time in one stage of a run (`batch_stages`)."""

    run_id: int
    stage: str
    started_at: dt.datetime
    ended_at: dt.datetime
    members: int | None
    audio_s: float | None


@dataclass(frozen=True)
class GpuMinute:
    """A host's GPU in one minute: mean busy share, most memory."""

    host: str | None
    at: dt.datetime
    busy: float
    memory_mb: float


@dataclass(frozen=True)
class MemberFigures:
    """The members' counts, by status and by what their transcripts hold."""

    done: int
    failed: int
    rejected: int
    uploading: int
    audio_s: float  # of the done members
    empty: int
    fallback: int
    timed: int  # sentence-sized segments with real times (--timestamps segment or word)
    worded: int
    subtitled: int
    longest: float | None


@dataclass(frozen=True)
class LanguageCount:
    language: str
    n: int


@dataclass(frozen=True)
class ModelHours:
    """Done members and their hours per model and settings (what made the transcripts)."""

    model: str | None
    transcript_key: str | None
    n: int
    hours: float


@dataclass(frozen=True)
class DurationBin:
    bin: int | None  # 1..bins (width_bucket's); None for a member without a duration
    n: int


@dataclass(frozen=True)
class ReasonCount:
    status: str
    reason: str | None
    n: int


@dataclass(frozen=True)
class FailedMember:
    archive: str
    member: str
    status: str
    error: str | None


R = TypeVar("R")


def _typed(cls: type[R], rows: list[dict[str, Any]]) -> list[R]:
    """Rows as `cls`, PostgreSQL's numerics and counts made the field's float or int."""
    assert dataclasses.is_dataclass(cls)
    numeric = {
        name: number
        for name, hint in typing.get_type_hints(cls).items()
        for number in (float, int)
        if hint is number or number in typing.get_args(hint)
    }
    return [
        cls(**{k: numeric[k](v) if k in numeric and v is not None else v for k, v in row.items()})
        for row in rows
    ]


class ReportQueries:
    """The report's views of some days (or of one archive of them), one query each."""

    def __init__(self, store: ProgressStore, days: list[dt.date], archive: str | None = None) -> None:
        self._store = store
        self._params: dict[str, Any] = {"days": days, "archive": archive}

    def _rows(self, cls: type[R], sql: str, **extra: Any) -> list[R]:
        return _typed(cls, self._store.query(sql, {**self._params, **extra}))

    def archives(self) -> list[ArchiveStatus]:
        rows = self._store.query(
            "SELECT * FROM archive_status WHERE " + _FILTER + " ORDER BY day, slot", self._params
        )
        return [ArchiveStatus.from_row(r) for r in rows]

    def runs(self) -> list[RunRow]:
        return self._rows(
            RunRow,
            "SELECT id, archive, host, slurm_job_id, restarts, started_at, finished_at, state, error, audio_s"
            " FROM archive_runs WHERE " + _FILTER + " ORDER BY started_at",
        )

    def stages(self) -> list[StageSpan]:
        return self._rows(
            StageSpan,
            "SELECT s.run_id, s.stage, s.started_at, s.ended_at, s.members, s.audio_s FROM batch_stages s"
            " JOIN archive_runs r ON r.id = s.run_id WHERE "
            + _RUN_FILTER
            + " ORDER BY s.run_id, s.stage, s.started_at",
        )

    def gpu(self) -> list[GpuMinute]:
        return self._rows(
            GpuMinute,
            "SELECT r.host, date_trunc('minute', g.at) AS at, avg(g.busy) AS busy,"
            " max(g.memory_mb) AS memory_mb FROM gpu_samples g JOIN archive_runs r ON r.id = g.run_id"
            " WHERE " + _RUN_FILTER + " GROUP BY 1, 2 ORDER BY 1, 2",
        )

    def members(self) -> MemberFigures:
        return self._rows(
            MemberFigures,
            "SELECT count(*) FILTER (WHERE status = 'done') AS done,"
            " count(*) FILTER (WHERE status = 'failed') AS failed,"
            " count(*) FILTER (WHERE status = 'rejected') AS rejected,"
            " count(*) FILTER (WHERE status = 'uploading') AS uploading,"
            " coalesce(sum(duration_s) FILTER (WHERE status = 'done'), 0) AS audio_s,"
            " count(*) FILTER (WHERE status = 'done' AND coalesce(transcript, '') = '') AS empty,"
            " count(*) FILTER (WHERE status = 'done' AND fallback) AS fallback,"
            " count(*) FILTER (WHERE status = 'done' AND timestamps IN ('segment', 'word')) AS timed,"
            " count(*) FILTER (WHERE status = 'done' AND timestamps = 'word') AS worded,"
            " count(*) FILTER (WHERE status = 'done' AND subtitles IS NOT NULL) AS subtitled,"
            " max(duration_s) FILTER (WHERE status = 'done') AS longest"
            " FROM audio_files WHERE " + _FILTER,
        )[0]

    def languages(self) -> list[LanguageCount]:
        return self._rows(
            LanguageCount,
            "SELECT coalesce(language, 'none') AS language, count(*) AS n FROM audio_files"
            " WHERE status = 'done' AND " + _FILTER + " GROUP BY 1 ORDER BY 2 DESC",
        )

    def models(self) -> list[ModelHours]:
        """Done members per model and settings (what made the transcripts)."""
        return self._rows(
            ModelHours,
            "SELECT model, transcript_key, count(*) AS n, coalesce(sum(duration_s), 0) / 3600 AS hours"
            " FROM audio_files WHERE status = 'done' AND " + _FILTER + " GROUP BY 1, 2 ORDER BY 3 DESC, 1",
        )

    def durations(self, longest: float, bins: int) -> list[DurationBin]:
        """Members done per duration bin of [0, longest]."""
        return self._rows(
            DurationBin,
            "SELECT width_bucket(duration_s, 0, %(longest)s, %(bins)s) AS bin, count(*) AS n"
            " FROM audio_files WHERE status = 'done' AND " + _FILTER + " GROUP BY 1 ORDER BY 1",
            longest=longest,
            bins=bins,
        )

    def reasons(self) -> list[ReasonCount]:
        """Failed and rejected members counted by reason, numbers folded (`after N members`)."""
        return self._rows(
            ReasonCount,
            "SELECT status, left(regexp_replace(coalesce(error, ''), '[0-9]+', 'N', 'g'), 160) AS reason,"
            " count(*) AS n FROM audio_files WHERE status IN ('failed', 'rejected') AND "
            + _FILTER
            + " GROUP BY 1, 2 ORDER BY 3 DESC",
        )

    def failures(self, cap: int) -> list[FailedMember]:
        return self._rows(
            FailedMember,
            "SELECT archive, member, status, error FROM audio_files"
            " WHERE status IN ('failed', 'rejected') AND "
            + _FILTER
            + " ORDER BY archive, member LIMIT %(cap)s",
            cap=cap,
        )

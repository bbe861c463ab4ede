"""The day report's queries (`tools/report.py` shapes and draws what they return).

Aggregated in PostgreSQL, so the report stays small however many members a day has: stage
timings per run and stage, GPU samples per host and minute, the duration histogram counted
here, and the table of failures capped. Read-only: a monitoring role can run them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .store import ProgressStore

_FILTER = "day = ANY(%(days)s) AND (%(archive)s::text IS NULL OR archive = %(archive)s)"
_RUN_FILTER = "r.day = ANY(%(days)s) AND (%(archive)s::text IS NULL OR r.archive = %(archive)s)"

Rows = list[dict[str, Any]]


class ReportQueries:
    """The report's views of some days (or of one archive of them), one query each."""

    def __init__(self, store: ProgressStore, days: list[dt.date], archive: str | None = None) -> None:
        self._store = store
        self._params: dict[str, Any] = {"days": days, "archive": archive}

    def _rows(self, sql: str, **extra: Any) -> Rows:
        return self._store.query(sql, {**self._params, **extra})

    def archives(self) -> Rows:
        return self._rows(
            "SELECT archive, day, slot, state, done, failed, rejected, uploading, audio_hours, elapsed_s,"
            " host, pid, restarts, slurm_job_id, live, lease_until, error FROM archive_status WHERE "
            + _FILTER
            + " ORDER BY day, slot"
        )

    def runs(self) -> Rows:
        return self._rows(
            "SELECT id, archive, host, slurm_job_id, restarts, started_at, finished_at, state, error, audio_s"
            " FROM archive_runs WHERE " + _FILTER + " ORDER BY started_at"
        )

    def stages(self) -> Rows:
        return self._rows(
            "SELECT s.run_id, s.stage, s.started_at, s.ended_at, s.members, s.audio_s FROM batch_stages s"
            " JOIN archive_runs r ON r.id = s.run_id WHERE "
            + _RUN_FILTER
            + " ORDER BY s.run_id, s.stage, s.started_at"
        )

    def gpu(self) -> Rows:
        return self._rows(
            "SELECT r.host, date_trunc('minute', g.at) AS at, avg(g.busy) AS busy,"
            " max(g.memory_mb) AS memory_mb FROM gpu_samples g JOIN archive_runs r ON r.id = g.run_id"
            " WHERE " + _RUN_FILTER + " GROUP BY 1, 2 ORDER BY 1, 2"
        )

    def members(self) -> dict[str, Any]:
        return self._rows(
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
            " FROM audio_files WHERE " + _FILTER
        )[0]

    def languages(self) -> Rows:
        return self._rows(
            "SELECT coalesce(language, 'none') AS language, count(*) AS n FROM audio_files"
            " WHERE status = 'done' AND " + _FILTER + " GROUP BY 1 ORDER BY 2 DESC"
        )

    def models(self) -> Rows:
        """Done members per model and settings (what made the transcripts)."""
        return self._rows(
            "SELECT model, transcript_key, count(*) AS n, coalesce(sum(duration_s), 0) / 3600 AS hours"
            " FROM audio_files WHERE status = 'done' AND " + _FILTER + " GROUP BY 1, 2 ORDER BY 3 DESC, 1"
        )

    def durations(self, longest: float, bins: int) -> Rows:
        """Members done per duration bin of [0, longest]."""
        return self._rows(
            "SELECT width_bucket(duration_s, 0, %(longest)s, %(bins)s) AS bin, count(*) AS n"
            " FROM audio_files WHERE status = 'done' AND " + _FILTER + " GROUP BY 1 ORDER BY 1",
            longest=longest,
            bins=bins,
        )

    def reasons(self) -> Rows:
        """Failed and rejected members counted by reason, numbers folded (`after N members`)."""
        return self._rows(
            "SELECT status, left(regexp_replace(coalesce(error, ''), '[0-9]+', 'N', 'g'), 160) AS reason,"
            " count(*) AS n FROM audio_files WHERE status IN ('failed', 'rejected') AND "
            + _FILTER
            + " GROUP BY 1, 2 ORDER BY 3 DESC"
        )

    def failures(self, cap: int) -> Rows:
        return self._rows(
            "SELECT archive, member, status, error FROM audio_files"
            " WHERE status IN ('failed', 'rejected') AND "
            + _FILTER
            + " ORDER BY archive, member LIMIT %(cap)s",
            cap=cap,
        )

"""A day's archives: finding them, deciding which still need a worker, and reporting on them.

Shared by both executors (Slurm and local) and by `status` / `finalize-day`, so that what is
submitted, what is skipped and what is reported follow one rule.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..state.records import ArchiveStatus
from ..state.segments import Searchable
from ..state.states import ArchiveState
from ..state.store import ArchiveKey, ProgressStore
from ..state.transcripts import ModelCount

log = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".tar.xz"


@dataclass(frozen=True)
class DayArchive:
    key: ArchiveKey
    path: Path
    size: int

    @property
    def slot(self) -> str:
        return self.key.slot


@dataclass
class DayPlan:
    day: dt.date
    archives: list[DayArchive]
    done: list[DayArchive] = field(default_factory=list)
    busy: list[tuple[DayArchive, ArchiveStatus]] = field(default_factory=list)
    todo: list[DayArchive] = field(default_factory=list)

    def describe(self) -> str:
        text = (
            f"{self.day}: {len(self.archives)} archives, {len(self.done)} already done, "
            f"{len(self.busy)} being processed elsewhere, {len(self.todo)} to process"
        )
        for archive, row in self.busy:
            text += (
                f"\n  {archive.slot}: running as job {row.slurm_job_id or '-'} on {row.host or '?'}"
                f" (pid {row.pid or '?'}), lease {_duration(row.lease_left_s)} left"
            )
        return text


class NoArchives(ConfigError):
    """A day without archives under the input root."""


def check_slot(slot: str) -> str:
    """A slot becomes a directory name and a log file name, so it must be one plain component."""
    if not slot or "/" in slot or slot.startswith((".", "-")) or any(c in slot for c in "\t\n\r\0"):
        raise ConfigError(f"bad slot {slot!r}")
    return slot


def discover(input_root: Path | None, day: dt.date) -> list[DayArchive]:
    """`<input_root>/<DATE>/*.tar.xz`, the slot being the file name without `.tar.xz`."""
    if input_root is None:
        raise ConfigError("no input root: set --input-root or PIPELINE_INPUT_ROOT")
    if not input_root.is_dir():
        raise ConfigError(f"input root {input_root} does not exist or is not a directory")
    day_dir = input_root / day.isoformat()
    paths = sorted(day_dir.glob(f"*{ARCHIVE_SUFFIX}")) if day_dir.is_dir() else []
    if not paths:
        raise NoArchives(f"no archives for {day} in {day_dir} (expected {day_dir}/<SLOT>{ARCHIVE_SUFFIX})")
    archives = []
    for path in paths:
        path = path.resolve()
        if any(c in str(path) for c in "\t\n\r"):
            raise ConfigError(f"archive path with a tab or newline: {str(path)!r}")
        slot = check_slot(path.name.removesuffix(ARCHIVE_SUFFIX))
        archives.append(DayArchive(ArchiveKey.of(day, path, slot), path, path.stat().st_size))
    return archives


def plan_day(store: ProgressStore, day: dt.date, archives: list[DayArchive]) -> DayPlan:
    """Register the day's archives; everything not done and not held by a live worker is to do."""
    store.days.register_archives(day, [(a.key, str(a.path), a.size) for a in archives])
    rows = {r.archive: r for r in store.days.archive_status(day)}
    plan = DayPlan(day, archives)
    for archive in archives:
        row = rows[archive.key.archive]
        if row.state == ArchiveState.DONE:
            plan.done.append(archive)
        elif row.live:
            plan.busy.append((archive, row))
        else:
            plan.todo.append(archive)
    return plan


# -- reporting ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DayTotals:
    archives: int
    by_state: dict[str, int]  # archives per state ("running?": a lease that expired)
    done: int  # members
    failed: int
    rejected: int
    uploading: int
    audio_hours: float
    complete: bool  # every archive done


@dataclass(frozen=True)
class DayReport:
    """A day's archives and their totals."""

    day: dt.date
    archives: list[ArchiveStatus]
    totals: DayTotals
    models: list[ModelCount] = field(default_factory=list)  # what made the done members' transcripts
    searchable: Searchable | None = None  # the done members' segments that `search` finds

    def as_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "archives": [a.as_json() for a in self.archives],
            "totals": asdict(self.totals),
            "models": [asdict(m) for m in self.models],
            "searchable": asdict(self.searchable) if self.searchable is not None else None,
        }


def day_report(store: ProgressStore, day: dt.date, *, transcripts: bool = True) -> DayReport:
    """`transcripts`: also what made the day's transcripts and how many segments are searchable
    (two scans of the day's members: the web view's day page, polled, leaves them out)."""
    rows = [
        # its lease expired: the worker died or stalled; claimable
        replace(r, state="running?") if r.state == ArchiveState.RUNNING and not r.live else r
        for r in store.days.archive_status(day)
    ]
    by_state = {s: sum(r.state == s for r in rows) for s in sorted({r.state for r in rows})}
    totals = DayTotals(
        archives=len(rows),
        by_state=by_state,
        done=sum(r.done for r in rows),
        failed=sum(r.failed for r in rows),
        rejected=sum(r.rejected for r in rows),
        uploading=sum(r.uploading for r in rows),
        audio_hours=round(sum(r.audio_hours for r in rows), 3),
        complete=bool(rows) and by_state.get(ArchiveState.DONE, 0) == len(rows),
    )
    if not transcripts:
        return DayReport(day, rows, totals)
    return DayReport(day, rows, totals, store.transcripts.models(day), store.segments.searchable(day))


def report_json(reports: list[DayReport]) -> str:
    """One day's report, or `{"days": [...]}` for several."""
    data = reports[0].as_json() if len(reports) == 1 else {"days": [r.as_json() for r in reports]}
    return json.dumps(data, indent=1, ensure_ascii=False)


STATUS_COLUMNS = (
    "slot", "state", "done", "failed", "rejected", "hours", "x rt", "owner", "lease", "elapsed", "last error",
)  # fmt: skip


def status_cells(r: ArchiveStatus) -> tuple[str, ...]:
    """An archive's row as `status` prints it (STATUS_COLUMNS; the web view's day page too)."""
    return (
        r.slot,
        r.state,
        str(r.done),
        str(r.failed),
        str(r.rejected),
        f"{r.audio_hours:.3f}",
        f"{r.x_realtime:.1f}" if r.x_realtime is not None else "-",
        r.owner,
        f"{r.lease_left_s:.0f}s" if r.live and r.lease_left_s is not None else "-",
        _duration(r.elapsed_s),
        r.error or "",
    )


def format_report(report: DayReport) -> str:
    header = STATUS_COLUMNS
    lines: list[tuple[str, ...]] = [header]
    for r in report.archives:
        *cells, error = status_cells(r)
        lines.append((*cells, _short(error)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    )
    # the day's line stays last: scripts read a day's totals from the report's last line
    return "\n".join([text, *format_transcripts(report), format_day_line(report)])


def format_transcripts(report: DayReport) -> list[str]:
    """`transcripts: 6 by tiny-b (settings 1a2b…), 2 by large-v2 (…)`: what made the day's; then
    `searchable: N segments of M members` (and how many done members `index` has yet to fill)."""
    if not report.models:
        return []
    parts = [
        f"{m.members} by {m.model or 'an unrecorded model'}"
        + (f" (settings {m.transcript_key[:8]})" if m.transcript_key else "")
        for m in report.models
    ]
    lines = ["transcripts: " + ", ".join(parts)]
    s = report.searchable
    if s is not None and (s.members or s.unindexed):
        todo = f"; {s.unindexed} done members not yet (streaming-pipeline index {report.day})"
        lines.append(
            f"searchable: {s.segments} segments of {s.members} members" + (todo if s.unindexed else "")
        )
    return lines


def format_day_line(report: DayReport) -> str:
    """The day's totals in one line (the last line of its report; a line per day for a range)."""
    t = report.totals
    if not t.archives:
        return f"{report.day}: no archives recorded"
    states = ", ".join(f"{n} {s}" for s, n in t.by_state.items())
    return (
        f"{report.day}: {t.archives} archives ({states}); members done {t.done}, "
        f"failed {t.failed}, rejected {t.rejected}, uploading {t.uploading}; "
        f"audio {t.audio_hours:.3f} h"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _short(error: str | None, width: int = 80) -> str:
    if not error:
        return ""
    error = " ".join(error.split())
    return error if len(error) <= width else error[: width - 1] + "…"


def finalize_day(store: ProgressStore, day: dt.date, *, job_id: str | None) -> DayReport:
    """Record the day's outcome (the finalize job's work) and return its report."""
    report = day_report(store, day)
    fields: dict[str, Any] = {
        "state": "done" if report.totals.complete else "incomplete",
        "archives": report.totals.archives,
        "finalized_at": dt.datetime.now(dt.UTC),
        "summary": asdict(report.totals),
    }
    if job_id:
        fields["finalize_job_id"] = job_id
    store.days.record(day, **fields)
    return report

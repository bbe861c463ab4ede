"""A day's archives: finding them, deciding which still need a worker, and recording the day's
outcome (the finalize job).

Shared by both executors (Slurm and local), so that what is submitted and what is skipped follow
one rule; what is reported is status/'s.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..state.records import ArchiveStatus
from ..state.states import ArchiveState
from ..state.store import ArchiveKey, ProgressStore
from ..status.day import DayReport, day_report
from ..status.text import duration

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
                f" (pid {row.pid or '?'}), lease {duration(row.lease_left_s)} left"
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
        elif row.live and row.state != ArchiveState.INTERRUPTED:  # a stopping one's worker waits
            plan.busy.append((archive, row))
        else:
            plan.todo.append(archive)
    return plan


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

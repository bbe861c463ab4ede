"""A day's archives and totals, as `status`, the finalize job and the web view's pages read them."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..state.records import ArchiveStatus, x_realtime
from ..state.segments import Searchable
from ..state.states import FINAL_ARCHIVE_STATES, ArchiveState
from ..state.store import ProgressStore
from ..state.transcripts import ModelCount

EXPIRED = "running?"  # a running archive whose lease expired: its worker died or stalled; claimable


@dataclass(frozen=True)
class DayTotals:
    archives: int
    by_state: dict[str, int]  # archives per state (EXPIRED: a lease that expired)
    done: int  # members
    failed: int
    rejected: int
    uploading: int
    audio_hours: float
    complete: bool  # every archive done
    settled: bool = False  # every archive in a final state (done, failed, damaged): nothing runs
    x_realtime: float | None = None  # `day_x_realtime`: the figure `/`, the day page and the report show


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


def with_expired(rows: list[ArchiveStatus]) -> list[ArchiveStatus]:
    """The archives as they are shown: a running one whose lease expired as EXPIRED."""
    return [replace(r, state=EXPIRED) if r.state == ArchiveState.RUNNING and not r.live else r for r in rows]


def day_x_realtime(rows: list[ArchiveStatus]) -> float | None:
    """A day's (or days') x realtime: its archives' audio over the seconds their runs took, summed
    (records.x_realtime; the web view's days table sums the same view's columns in SQL). Per
    worker, so that two days compare whatever the number of nodes; the day's wall clock is the
    report's "wall hours"."""
    return x_realtime(sum(r.audio_hours for r in rows), sum(r.elapsed_s or 0.0 for r in rows))


def day_totals(rows: list[ArchiveStatus]) -> DayTotals:
    by_state = {s: sum(r.state == s for r in rows) for s in sorted({r.state for r in rows})}
    return DayTotals(
        archives=len(rows),
        by_state=by_state,
        done=sum(r.done for r in rows),
        failed=sum(r.failed for r in rows),
        rejected=sum(r.rejected for r in rows),
        uploading=sum(r.uploading for r in rows),
        audio_hours=round(sum(r.audio_hours for r in rows), 3),
        complete=bool(rows) and by_state.get(ArchiveState.DONE, 0) == len(rows),
        settled=bool(rows) and all(r.state in FINAL_ARCHIVE_STATES for r in rows),
        x_realtime=day_x_realtime(rows),
    )


def day_report(store: ProgressStore, day: dt.date, *, transcripts: bool = True) -> DayReport:
    """`transcripts`: also what made the day's transcripts and how many segments are searchable
    (two scans of the day's members: the web view's day page, polled, leaves them out)."""
    rows = with_expired(store.days.archive_status(day))
    totals = day_totals(rows)
    if not transcripts:
        return DayReport(day, rows, totals)
    return DayReport(day, rows, totals, store.transcripts.models(day), store.segments.searchable(day))


def report_json(reports: list[DayReport]) -> str:
    """One day's report, or `{"days": [...]}` for several."""
    data = reports[0].as_json() if len(reports) == 1 else {"days": [r.as_json() for r in reports]}
    return json.dumps(data, indent=1, ensure_ascii=False)

"""The status read model's rules, without a database: what an expired lease shows, the day's
totals, and that every figure is a typed record from the view to the CLI."""

from __future__ import annotations

import datetime as dt
import decimal
import typing
from dataclasses import fields

from streaming_pipeline.controller.plan import DayArchive, DayPlan
from streaming_pipeline.state.day_table import DayTable
from streaming_pipeline.state.records import ArchiveStatus
from streaming_pipeline.state.reports import MemberFigures, ReportQueries, RunRow, _typed
from streaming_pipeline.status.day import EXPIRED, DayReport, day_report, day_totals, with_expired
from streaming_pipeline.status.text import STATUS_COLUMNS, format_day_line, format_report, status_cells

DAY = dt.date(2025, 1, 25)


def _archive(slot: str, state: str, *, live: bool = False, done: int = 0, hours: float = 0) -> ArchiveStatus:
    values: dict[str, typing.Any] = {f.name: None for f in fields(ArchiveStatus)}
    values.update(
        day=DAY, slot=slot, archive=f"{DAY}/{slot}.tar.xz", state=state, live=live, done=done, failed=0,
        rejected=0, uploading=0, audio_hours=hours, restarts=0, lease_token=1, elapsed_s=1800.0,
    )  # fmt: skip
    return ArchiveStatus(**values)


def test_an_expired_running_archive_shows_as_claimable_and_the_day_is_not_complete() -> None:
    rows = with_expired([_archive("08_00", "done", done=3, hours=0.5), _archive("08_30", "running")])
    assert [r.state for r in rows] == ["done", EXPIRED]
    assert with_expired([_archive("09_00", "running", live=True)])[0].state == "running", "a live lease"
    totals = day_totals(rows)
    assert totals.by_state == {"done": 1, EXPIRED: 1} and totals.done == 3 and not totals.complete
    assert day_totals(rows[:1]).complete and not day_totals([]).complete, "no archives: not complete"
    report = DayReport(DAY, rows, totals)
    assert format_day_line(report) == (
        f"{DAY}: 2 archives (1 done, 1 running?); members done 3, failed 0, rejected 0, uploading 0;"
        " audio 0.500 h, 0.5x realtime"
    ), "0.5 h of audio over the two archives' 1800 s each"
    assert format_report(report).splitlines()[-1] == format_day_line(report), "scripts read the last line"
    cells = dict(zip(STATUS_COLUMNS, status_cells(rows[0]), strict=True))
    assert cells["x rt"] == "1.0" and cells["elapsed"] == "0:30:00", "0.5 h of audio in 30 min"


def test_the_report_rows_are_typed_and_postgres_numerics_become_floats() -> None:
    (run,) = _typed(
        RunRow,
        [{"id": 7, "archive": "a", "host": None, "slurm_job_id": None, "restarts": 0,
          "started_at": dt.datetime(2025, 1, 25, tzinfo=dt.UTC), "finished_at": None, "state": "done",
          "error": None, "audio_s": decimal.Decimal("12.5")}],
    )  # fmt: skip
    assert type(run.audio_s) is float and run.audio_s == 12.5
    hints = typing.get_type_hints(ReportQueries.members)
    assert hints["return"] is MemberFigures
    assert typing.get_type_hints(ReportQueries.archives)["return"] == list[ArchiveStatus], (
        "the report's archives are status's rows (one x-realtime rule)"
    )


def test_a_day_report_is_typed_from_the_view_to_the_cli() -> None:
    assert typing.get_type_hints(DayTable.archive_status)["return"] == list[ArchiveStatus]
    assert typing.get_type_hints(DayReport)["archives"] == list[ArchiveStatus]
    assert typing.get_type_hints(day_report)["return"] is DayReport
    assert typing.get_type_hints(DayPlan)["busy"] == list[tuple[DayArchive, ArchiveStatus]]

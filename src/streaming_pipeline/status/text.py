"""A day's report as text: the table `status` prints, whose cells the web view's day page shows
too, and the day's line that scripts read (the last line of a report)."""

from __future__ import annotations

from ..state.records import ArchiveStatus
from .day import DayReport

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
        duration(r.elapsed_s),
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
        f"audio {t.audio_hours:.3f} h" + (f", {t.x_realtime:.1f}x realtime" if t.x_realtime else "")
    )


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def duration(seconds: float | None) -> str:
    """`h:mm:ss`, or `-` for none."""
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _short(error: str | None, width: int = 80) -> str:
    if not error:
        return ""
    error = " ".join(error.split())
    return error if len(error) <= width else error[: width - 1] + "…"

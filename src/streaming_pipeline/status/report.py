"""`streaming-pipeline report`: a day (or days, or one archive) as one self-contained HTML file.

Nextflow's `-with-report` and Snakemake's `--report` set the convention: one file, data embedded,
nothing fetched when it opens. The charts are SVG drawn here (charts.py), not by a charting
library inlined into the page: plotly.js made a 12-member day's report 4.8 MB, and the page now
weighs what its data does. A small script fills the tables from the embedded JSON. Read-only: a
monitoring role can run it.

Data is aggregated here, in SQL, so the file stays small however many members a day has: stage
timings are merged per run and stage, throughput and GPU samples are binned, the duration
histogram is counted in PostgreSQL, and the member table of failures is capped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..state.records import ArchiveStatus
from ..state.reports import (
    DurationBin,
    FailedMember,
    GpuMinute,
    LanguageCount,
    MemberFigures,
    ModelHours,
    ReasonCount,
    ReportQueries,
    RunRow,
    StageSpan,
)
from ..state.store import ProgressStore
from . import charts
from .charts import Series, Span
from .day import day_x_realtime

log = logging.getLogger(__name__)

MAX_FAILURE_ROWS = 200
DURATION_BINS = 30
THROUGHPUT_BINS = 120
TIMELINE_RESOLUTION = 600  # gaps shorter than the day's span / this are merged in the timeline
STAGES = ("extract", "convert", "transcribe", "upload")
COLOURS = {"extract": "#8c6bb1", "convert": "#2b8a3e", "transcribe": "#2171b5", "upload": "#d9480f"}
STATE_COLOURS = {"done": "#2171b5", "failed": "#c92a2a"}  # any other state: OTHER
OTHER = "#d9480f"
HOST_COLOURS = ("#2171b5", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#5c940d", "#1864ab", "#a61e4d")


def collect(store: ProgressStore, days: list[dt.date], archive: str | None = None) -> dict[str, Any]:
    """Everything the report draws, aggregated (one query per view, state/reports.py)."""
    q = ReportQueries(store, days, archive)
    members = q.members()
    longest = members.longest or 1.0
    return _shape(
        days,
        archive,
        q.archives(),
        q.runs(),
        q.stages(),
        q.gpu(),
        members,
        q.languages(),
        q.models(),
        q.durations(longest * 1.0001, DURATION_BINS),
        q.reasons(),
        q.failures(MAX_FAILURE_ROWS),
        longest,
    )


def _shape(
    days: list[dt.date],
    archive: str | None,
    archives: list[ArchiveStatus],
    runs: list[RunRow],
    stages: list[StageSpan],
    gpu: list[GpuMinute],
    members: MemberFigures,
    languages: list[LanguageCount],
    models: list[ModelHours],
    durations: list[DurationBin],
    reasons: list[ReasonCount],
    failures: list[FailedMember],
    longest: float,
) -> dict[str, Any]:
    """The document report.js draws (JSON, embedded in the page)."""
    run_by_id = {r.id: r for r in runs}
    labels = _run_labels(runs)
    per_archive = _per_archive(archives, stages, run_by_id)
    return {
        "title": _title(days, archive),
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "summary": _summary(archives, runs, gpu, members),
        "timeline": _timeline(stages, run_by_id, labels),
        "throughput": _throughput(stages, runs),
        "per_archive": per_archive,
        "slowest": sorted(per_archive, key=lambda a: -a["elapsed_s"])[:5],
        "held": [a for a in per_archive if a["lease_until"]],
        "gpu": _gpu_series(gpu),
        "reasons": [{"status": r.status, "reason": r.reason or "(no reason)", "n": r.n} for r in reasons],
        "failures": [
            {"archive": f.archive, "member": f.member, "status": f.status, "error": f.error or ""}
            for f in failures
        ],
        "failures_total": members.failed + members.rejected,
        "quality": _quality(members, languages, models, durations, longest),
        "runs": [
            {
                "label": labels[r.id],
                "archive": r.archive,
                "host": r.host,
                "job": r.slurm_job_id,
                "state": r.state,
                "started": _iso(r.started_at),
                "finished": _iso(r.finished_at),
                "error": r.error or "",
            }
            for r in runs
        ],
    }


def _summary(
    archives: list[ArchiveStatus],
    runs: list[RunRow],
    gpu: list[GpuMinute],
    members: MemberFigures,
) -> dict[str, Any]:
    starts = [r.started_at for r in runs]
    ends = [r.finished_at or r.started_at for r in runs]
    wall_s = (max(ends) - min(starts)).total_seconds() if runs else 0.0
    audio_s = members.audio_s
    gpu_hosts = {g.host for g in gpu}
    gpu_runs = [r for r in runs if r.host in gpu_hosts]
    gpu_s = sum((((r.finished_at or r.started_at) - r.started_at).total_seconds() for r in gpu_runs), 0.0)
    states: defaultdict[str, int] = defaultdict(int)
    for a in archives:
        states[a.state] += 1
    named = ("done", "failed", "damaged", "interrupted")
    return {
        "archives": len(archives),
        "archives_done": states.get("done", 0),
        "archives_failed": states.get("failed", 0),
        "archives_damaged": states.get("damaged", 0),
        "archives_interrupted": states.get("interrupted", 0),
        "archives_other": len(archives) - sum(states.get(k, 0) for k in named),
        "runs": len(runs),
        "members_done": members.done,
        "members_failed": members.failed,
        "members_rejected": members.rejected,
        "members_uploading": members.uploading,
        "audio_hours": audio_s / 3600,
        "wall_hours": wall_s / 3600,
        "xrt": day_x_realtime(archives) or 0.0,  # the figure `/` and the day page show
        "gpu_hours": gpu_s / 3600,
    }


def _per_archive(
    archives: list[ArchiveStatus], stages: list[StageSpan], run_by_id: dict[int, RunRow]
) -> list[dict[str, Any]]:
    stage_seconds: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(STAGES, 0.0))
    for s in stages:
        run = run_by_id.get(s.run_id)
        if run is not None:
            stage_seconds[run.archive][s.stage] += (s.ended_at - s.started_at).total_seconds()
    return [
        {
            "archive": a.archive,
            "slot": a.slot,
            "state": a.state,
            "xrt": a.x_realtime or 0.0,  # status's figure (records.x_realtime)
            "elapsed_s": a.elapsed_s or 0.0,
            "stages": stage_seconds.get(a.archive, dict.fromkeys(STAGES, 0.0)),
            # the current (live lease) or last worker, as `status` shows it
            "owner": a.owner,
            "lease_until": a.lease_until.isoformat(timespec="seconds") if a.live and a.lease_until else None,
        }
        for a in archives
    ]


def _quality(
    members: MemberFigures,
    languages: list[LanguageCount],
    models: list[ModelHours],
    durations: list[DurationBin],
    longest: float,
) -> dict[str, Any]:
    done = members.done
    width = longest / DURATION_BINS

    def share(count: int) -> float:
        return count / done if done else 0.0

    return {
        "languages": [{"language": r.language, "n": r.n} for r in languages],
        "models": [
            {
                "model": r.model or "(not recorded)",
                "settings": (r.transcript_key or "")[:8],
                "members": r.n,
                "hours": r.hours,
            }
            for r in models
        ],
        "durations": [
            {"from": (r.bin - 1) * width, "to": r.bin * width, "n": r.n}
            for r in durations
            if r.bin is not None
        ],
        "empty_share": share(members.empty),
        "fallback_share": share(members.fallback),
        "timed_share": share(members.timed),
        "word_share": share(members.worded),
        "subtitled_share": share(members.subtitled),
    }


def _title(days: list[dt.date], archive: str | None) -> str:
    span = days[0].isoformat() if len(days) == 1 else f"{days[0]}..{days[-1]}"
    return f"{archive} ({span})" if archive else span


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _run_labels(runs: list[RunRow]) -> dict[int, str]:
    """`host · slot #k`: runs grouped by node, a requeued or rerun archive shows one row per run."""
    seen: dict[str, int] = defaultdict(int)
    labels = {}
    for r in runs:
        seen[r.archive] += 1
        slot = r.archive.rsplit("/", 1)[-1].removesuffix(".tar.xz")
        labels[r.id] = f"{r.host or '?'} · {r.archive.split('/', 1)[0]} {slot} #{seen[r.archive]}"
    return labels


def _timeline(
    stages: list[StageSpan], run_by_id: dict[int, RunRow], labels: dict[int, str]
) -> dict[str, Any]:
    """Per run and stage, the batches' intervals merged where the gap between them is under a
    pixel or two of the chart (1/600 of the day's span): one bar per busy stretch, so a day of
    thousands of batches draws as fast as a small one."""
    bars: dict[str, list[tuple[str, str, float]]] = {stage: [] for stage in STAGES}
    merged: dict[tuple[int, str], list[list[dt.datetime]]] = defaultdict(list)
    if not stages:
        return {"rows": sorted(labels.values()), "bars": {}}
    span = max(s.ended_at for s in stages) - min(s.started_at for s in stages)
    gap = max(dt.timedelta(seconds=1), span / TIMELINE_RESOLUTION)
    for s in stages:
        spans = merged[(s.run_id, s.stage)]
        if spans and s.started_at <= spans[-1][1] + gap:
            spans[-1][1] = max(spans[-1][1], s.ended_at)
        else:
            spans.append([s.started_at, s.ended_at])
    for (run_id, stage), spans in merged.items():
        if run_id not in run_by_id:
            continue
        for start, end in spans:
            bars[stage].append(
                (labels[run_id], start.isoformat(), max((end - start).total_seconds(), 0.05) * 1000)
            )
    order = sorted(labels.values())
    return {"rows": order, "bars": {k: v for k, v in bars.items() if v}}


def _throughput(stages: list[StageSpan], runs: list[RunRow]) -> dict[str, Any]:
    uploads = [s for s in stages if s.stage == "upload" and s.members]
    if not runs:
        return {"t": [], "audio_per_s": [], "members_per_min": [], "workers": []}
    start = min(r.started_at for r in runs)
    end = max([r.finished_at or r.started_at for r in runs] + [s.ended_at for s in uploads])
    span = max((end - start).total_seconds(), 1.0)
    width = max(span / THROUGHPUT_BINS, 1.0)
    bins = int(span // width) + 1
    audio = [0.0] * bins
    done = [0] * bins
    for s in uploads:
        i = min(int((s.ended_at - start).total_seconds() // width), bins - 1)
        audio[i] += s.audio_s or 0.0
        done[i] += s.members or 0
    workers = []
    times = []
    for i in range(bins):
        t = start + dt.timedelta(seconds=(i + 0.5) * width)
        times.append(t.isoformat())
        workers.append(sum(1 for r in runs if r.started_at <= t <= (r.finished_at or end)))
    return {
        "t": times,
        "audio_per_s": [a / width for a in audio],
        "members_per_min": [d * 60 / width for d in done],
        "workers": workers,
        "bin_s": width,
    }


def _gpu_series(gpu: list[GpuMinute]) -> dict[str, Any]:
    hosts: dict[str, dict[str, list[Any]]] = {}
    for g in gpu:
        series = hosts.setdefault(g.host or "?", {"t": [], "busy": [], "memory_mb": []})
        series["t"].append(g.at.isoformat())
        series["busy"].append(100 * g.busy)
        series["memory_mb"].append(g.memory_mb)
    return hosts


_when = dt.datetime.fromisoformat


def draw(data: dict[str, Any]) -> dict[str, str]:
    """Each chart of the report as SVG markup, by the id of its place in the page."""
    return {
        "timeline": _draw_timeline(data["timeline"]),
        "throughput": _draw_throughput(data["throughput"]),
        **_draw_per_archive(data["per_archive"]),
        **_draw_quality(data["quality"], data["reasons"]),
        "gpu": _draw_gpu(data["gpu"]),
    }


def _draw_timeline(tl: dict[str, Any]) -> str:
    spans = [
        Span(row, _when(start), ms / 1000, stage)
        for stage, bars in tl["bars"].items()
        for row, start, ms in bars
    ]
    return charts.timeline("each archive run by node, coloured by stage", tl["rows"], spans, COLOURS)


def _draw_throughput(t: dict[str, Any]) -> str:
    times = [_when(x) for x in t["t"]]
    return charts.line_chart(
        "audio seconds transcribed per second",
        times,
        [Series("audio s per s", "#2171b5", t["audio_per_s"])],
        y_title="audio s / s",
        height=220,
    ) + charts.line_chart(
        "members done per minute and workers running",
        times,
        [
            Series("members per minute", "#2b8a3e", t["members_per_min"]),
            Series("workers running", "#d9480f", t["workers"]),
        ],
        y_title="members / min; workers",
        height=220,
    )


def _draw_per_archive(per: list[dict[str, Any]]) -> dict[str, str]:
    slots = [a["slot"] for a in per]
    return {
        "xrt": charts.bar_chart(
            "x realtime per archive",
            slots,
            [Series("x realtime", "#2171b5", [a["xrt"] for a in per])],
            y_title="audio s / wall s",
            colours=[STATE_COLOURS.get(a["state"], OTHER) for a in per],
        ),
        "stages": charts.bar_chart(
            "busy seconds per stage and archive",
            slots,
            [Series(stage, COLOURS[stage], [a["stages"][stage] for a in per]) for stage in STAGES],
            y_title="stage seconds (busy)",
            stacked=True,
        ),
    }


def _draw_quality(q: dict[str, Any], reasons: list[dict[str, Any]]) -> dict[str, str]:
    return {
        "reasons": charts.hbar_chart(
            "failures and rejections by reason",
            [f"{r['status']}: {r['reason']}" for r in reasons],
            [r["n"] for r in reasons],
            [STATE_COLOURS["failed"] if r["status"] == "failed" else OTHER for r in reasons],
        ),
        "languages": charts.bar_chart(
            "members per language",
            [r["language"] or "?" for r in q["languages"]],
            [Series("members", "#2171b5", [r["n"] for r in q["languages"]])],
            y_title="members",
        ),
        "durations": charts.bar_chart(
            "members by duration",
            [f"{charts.number(d['from'])}–{charts.number(d['to'])} s" for d in q["durations"]],
            [Series("members", "#2171b5", [d["n"] for d in q["durations"]])],
            y_title="members",
        ),
    }


def _draw_gpu(gpu: dict[str, Any]) -> str:
    if not gpu:
        return '<p class="note">No GPU samples were recorded (CPU workers, or no NVML).</p>'
    hosts = list(gpu.items())
    colour = {h: HOST_COLOURS[i % len(HOST_COLOURS)] for i, (h, _) in enumerate(hosts)}
    return "".join(
        charts.line_chart(
            f"GPU {what} per node",
            [],
            [Series(h, colour[h], series[key], [_when(x) for x in series["t"]]) for h, series in hosts],
            y_title=what,
            height=240,
        )
        for key, what in (("busy", "busy %"), ("memory_mb", "memory MB"))
    )


def render(data: dict[str, Any]) -> str:
    """The HTML: styles, data, the charts as SVG and the tables' script inline; tables built with
    textContent (member names are data, never markup), charts escaped where drawn (charts.py)."""
    payload = json.dumps(data, ensure_ascii=False, default=str).replace("</", "<\\/")
    here = Path(__file__).parent
    template = (here / "report.html").read_text(encoding="utf-8")
    script = (here / "report.js").read_text(encoding="utf-8")
    values = {"title": html.escape(data["title"]), "script": script, "data": payload}
    values.update({f"chart:{k}": v for k, v in draw(data).items()})
    # One pass: what is substituted (member names in the data) is never scanned for markers again.
    return re.sub(r"\{\{(title|script|data|chart:\w+)\}\}", lambda m: values[m.group(1)], template)


def write_report(store: ProgressStore, days: list[dt.date], out: Path, archive: str | None = None) -> Path:
    data = collect(store, days, archive)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(render(data), encoding="utf-8")
    tmp.replace(out)
    log.info("report of %s written to %s (%d bytes)", data["title"], out, out.stat().st_size)
    return out

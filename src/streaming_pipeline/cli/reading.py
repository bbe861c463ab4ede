"""The commands that read the progress database: status, search, index, finalize-day, report,
export."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..day_specs import days_label, parse_days
from ..errors import ConfigError

if TYPE_CHECKING:  # imported lazily at run time: `--help` must not load faster-whisper or psycopg
    pass
from .common import check_schema, config_from, open_store, report_path, write_day_report


def status(args: argparse.Namespace) -> int:
    """A day: a line per archive and the totals. Several days: a line per day, and the totals."""
    from ..status.day import day_report, report_json
    from ..status.text import format_day_line, format_report

    days = parse_days(args.days)
    config = config_from(args)
    store = open_store(config)
    try:  # read-only: a monitoring user need not be allowed to migrate
        check_schema(store)
        reports = [day_report(store, day) for day in days]
    finally:
        store.close()
    recorded = [r for r in reports if r.archives]
    if args.json:
        print(report_json(reports))
    elif not recorded:
        label = days_label(days)
        print(f"no archives recorded for {label} (submit with: streaming-pipeline process-day {label})")
    elif len(days) == 1:
        print(format_report(reports[0]))
        html = report_path(config, days[0].isoformat())
        if html.exists():
            print(f"report: {html.resolve()} (streaming-pipeline report {days[0]} writes it anew)")
    else:
        for report in reports:
            print(format_day_line(report))
        complete = sum(r.totals.complete for r in recorded)
        archives = sum(r.totals.archives for r in recorded)
        done, failed = sum(r.totals.done for r in recorded), sum(r.totals.failed for r in recorded)
        print(
            f"{days_label(days)}: {len(recorded)} of {len(days)} days recorded, {complete} complete;"
            f" archives {archives}, members done {done}, failed {failed}"
        )
    return 0 if recorded else 1


def search(args: argparse.Namespace) -> int:
    """Ranked segments where the query was said; 1 when there are none (as grep)."""
    import shlex
    import sys

    from ..state.search_text import CLOSE, OPEN
    from ..state.segments import CANDIDATES, SearchQuery

    if args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    days = parse_days([args.days]) if args.days else []
    query = SearchQuery(
        args.query,
        first_day=min(days) if days else None,
        last_day=max(days) if days else None,
        language=args.language.lower() if args.language else None,
        archive=args.archive,
        speaker=args.speaker.upper() if args.speaker else None,
        voice=args.voice.upper() if args.voice else None,
        limit=args.limit,
    )
    store = open_store(config_from(args))
    try:  # read-only
        check_schema(store)
        found = store.segments.search(query)
    finally:
        store.close()
    hits = found.hits
    bold = sys.stdout.isatty()
    for hit in hits:
        if args.json:
            print(json.dumps(hit.as_json(), ensure_ascii=False))
            continue
        text = hit.highlight.replace(OPEN, "\x1b[1m").replace(CLOSE, "\x1b[0m") if bold else hit.highlight
        where = f"{hit.day} {hit.slot} {shlex.quote(hit.member)}"
        who = f" {hit.speaker}" if hit.speaker else ""
        print(f"{where}  {_clock(hit.start)}-{_clock(hit.end)}  [{hit.language or '?'}{who}]  {text}")
        print(f"    {hit.player}")
    if not hits and not args.json:
        print(f"no segment matches {args.query!r}", file=sys.stderr)
    if found.truncated:
        print(
            f"more than {CANDIDATES} segments match: these are the best of the first {CANDIDATES} found"
            " (narrow the search: a phrase in quotes, --days, --language)",
            file=sys.stderr,
        )
    return 0 if hits else 1


def _clock(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    return f"{int(minutes // 60)}:{int(minutes % 60):02d}:{s:04.1f}"


def index(args: argparse.Namespace) -> int:
    """Fill the searchable segments of days' done members from their JSON on the destination."""
    from ..run.index import DayIndexer

    config = config_from(args)
    store = open_store(config, patient=True)
    left = 0
    try:
        store.init_schema()
        for day in parse_days(args.days):
            result = DayIndexer(config, store, day).run()
            print(result.summary_line(), flush=True)
            left += len(result.left)
    finally:
        store.close()
    return 1 if left else 0


def finalize_day(args: argparse.Namespace) -> int:
    from ..controller.plan import finalize_day
    from ..run.job_environment import JobEnvironment
    from ..run.voices import find_voices
    from ..status.text import format_day_line, format_report

    config = config_from(args)
    days = parse_days(args.days)
    store = open_store(config)
    complete = True
    try:
        store.init_schema()
        for day in days:
            report = finalize_day(store, day, job_id=JobEnvironment.of().job_id)
            find_voices(store, day)  # the same voice across the day's members
            write_day_report(store, config, day)
            print(format_report(report) if len(days) == 1 else format_day_line(report), flush=True)
            complete = complete and report.totals.complete
    finally:
        store.close()
    return 0 if complete else 1


def voices(args: argparse.Namespace) -> int:
    """The same voice across each day's members: clustered, recorded, printed."""
    from ..run.voices import find_voices

    store = open_store(config_from(args))
    try:
        check_schema(store)
        for day in parse_days(args.days):
            found = find_voices(store, day)
            if args.json:
                for line in found.json_lines():
                    print(json.dumps(line, ensure_ascii=False))
            else:
                print("\n".join(found.lines()))
    finally:
        store.close()
    return 0


def report(args: argparse.Namespace) -> int:
    from ..status.report import write_report

    days = parse_days(args.days)
    config = config_from(args)
    out = args.out or report_path(config, days_label(days))
    store = open_store(config)
    try:  # read-only: a monitoring user need not be allowed to migrate
        check_schema(store)
        write_report(store, days, out, archive=args.archive)
    finally:
        store.close()
    print(out.resolve())
    return 0


def export(args: argparse.Namespace) -> int:
    from ..hf.export import DayExporter
    from ..hf.shards import parse_size
    from ..state.store import SCHEMA_VERSION

    config = config_from(args)
    days = parse_days(args.days)
    shard_size = parse_size(args.shard_size)
    store = open_store(config, patient=True)
    try:
        if store.schema_version() < SCHEMA_VERSION:
            store.init_schema()
        for day in days:
            out = args.out / day.isoformat() if args.out and len(days) > 1 else args.out
            exporter = DayExporter(
                config, store, day, out=out, shard_rows=args.shard_rows, shard_size=shard_size
            )
            result = exporter.run()
            print(
                f"exported {result.rows} members of {day} ({result.audio_s / 3600:.3f} h) "
                f"in {len(result.shards)} shards to {result.output}",
                flush=True,
            )
    finally:
        store.close()
    return 0


def serve(args: argparse.Namespace) -> int:
    """The web view, until interrupted."""
    from ..web.server import serve

    return serve(config_from(args))

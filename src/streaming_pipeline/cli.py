"""`streaming-pipeline` command line: the only place that reads the environment or sets up logging."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import PipelineConfig, build_config, config_env, dsn_password, environ, parse_day
from .errors import ConfigError, PipelineError

if TYPE_CHECKING:  # imported lazily at run time: `--help` must not load faster-whisper or psycopg
    from .day import DayPlan
    from .store import ProgressStore

log = logging.getLogger("streaming_pipeline")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# process-tar / process-day stopped by a signal; a rerun (or Slurm's requeue) resumes.
EXIT_INTERRUPTED = 75


def _setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_streaming_pipeline", False)]:
        root.removeHandler(old)
        old.close()
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler._streaming_pipeline = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("faster_whisper", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline (flags override PIPELINE_* variables)")
    g.add_argument("--dsn", help="PostgreSQL DSN (PIPELINE_DSN, else DB_CREDS)")
    g.add_argument("--remote", help="destination: path, host:path or rsync://host[:port]/module/path")
    g.add_argument("--scratch-dir", type=Path, help="per-job scratch root (PIPELINE_SCRATCH)")
    g.add_argument("--model", help="model name or local CTranslate2 directory (PIPELINE_MODEL)")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"))
    g.add_argument("--compute-type", help="default: float16 on GPU, int8 on CPU")
    g.add_argument("--language", help="force a language (default: detect per file)")
    g.add_argument("--beam-size", type=int)
    g.add_argument("--temperatures", help="fallback decoding temperatures (0.0,0.2,0.4,0.6,0.8,1.0)")
    g.add_argument("--no-vad", dest="vad", action="store_const", const=False)
    g.add_argument(
        "--decoder",
        choices=("auto", "batched", "per-member"),
        help="batched: windows of many members per GPU call (auto); per-member: faster-whisper's transcribe",
    )
    g.add_argument(
        "--decode-batch-size", type=int, help="windows per decoding call (0: 16 on CUDA, 8 on CPU)"
    )
    g.add_argument("--max-new-tokens", type=int, help="tokens decoded per window at most (model's limit)")
    g.add_argument("--stream-batch-size", type=int, help="members per extracted batch (200)")
    g.add_argument("--process-batch-size", type=int, help="members being transcribed at once (100)")
    g.add_argument("--num-workers", type=int, help="conversion processes (10)")
    g.add_argument("--max-concurrent-uploads", type=int, help="rsync threads (8)")
    g.add_argument("--upload-timeout", type=float, help="seconds per rsync attempt (120)")
    g.add_argument("--upload-retries", type=int, help="attempts per upload (5)")
    g.add_argument("--max-member-bytes", type=int, help="members declaring more are rejected")
    g.add_argument("--max-members", type=int, help="members of one archive past this are rejected (1e6)")
    g.add_argument("--decode-timeout", type=float, help="seconds to decode one member (600)")
    g.add_argument("--cpu-threads", type=int, help="CTranslate2 CPU threads (0: library default)")
    g.add_argument(
        "--transcribe-workers",
        type=int,
        help="threads preparing windows (batched) or files transcribed at once (1)",
    )


def _day_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("day fan-out")
    g.add_argument("--executor", choices=("slurm", "local"), default="slurm")
    g.add_argument("--input-root", type=Path, help="archives are <root>/<DATE>/<SLOT>.tar.xz")
    g.add_argument("--log-dir", type=Path, help="worker logs (PIPELINE_LOG_DIR, default ./logs)")
    g.add_argument("--max-parallel", type=int, help="archives at once (PIPELINE_MAX_PARALLEL, 4)")
    g.add_argument("--hpc-dir", type=Path, help="folder of the hpc/*.sh scripts (Slurm)")
    g.add_argument(
        "--worker-sbatch-args",
        help='extra sbatch options for workers; write --worker-sbatch-args="--gres=none"',
    )


def _config(args: argparse.Namespace) -> PipelineConfig:
    return build_config({k: v for k, v in vars(args).items() if v is not None}, environ())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streaming-pipeline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("process-tar", help="process one archive of a day")
    p.add_argument("day", help="YYYY-MM-DD")
    p.add_argument("archive", type=Path, help="path to the .tar.xz")
    p.add_argument("slot", help="slot name, e.g. 12_30")
    p.add_argument("--log-file", type=Path)
    _pipeline_options(p)

    p = sub.add_parser("process-day", help="process a day's archives: a Slurm job array, or locally")
    p.add_argument("day", help="YYYY-MM-DD")
    _day_options(p)
    _pipeline_options(p)

    p = sub.add_parser("status", help="one line per archive of a day, and the day's totals")
    p.add_argument("day", help="YYYY-MM-DD")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--dsn")

    p = sub.add_parser("finalize-day", help="record a day's outcome and print its summary")
    p.add_argument("day", help="YYYY-MM-DD")
    p.add_argument("--dsn")

    p = sub.add_parser("export", help="a day's done members as Parquet shards that `datasets` streams")
    p.add_argument("day", help="YYYY-MM-DD")
    p.add_argument("--out", type=Path, help="local folder (default: <remote>/<DATE>/parquet/ via rsync)")
    p.add_argument("--shard-rows", type=int, default=10000, help="rows per shard at most (10000)")
    p.add_argument("--shard-size", default="5GB", help="bytes per shard at most, e.g. 5GB, 500MB (5GB)")
    _pipeline_options(p)

    p = sub.add_parser(
        "process-dataset", help="stream a Hugging Face dataset through conversion and transcription"
    )
    p.add_argument("source", help="a local folder (Parquet, audiofolder) or a hub dataset name")
    p.add_argument("--name", help="the dataset's configuration")
    p.add_argument("--split", default="train")
    p.add_argument("--audio-column", default="audio")
    p.add_argument("--text-column", help="rows with a transcript here are not transcribed")
    p.add_argument("--id-column", help="row ids (default: the row's index in the split)")
    p.add_argument("--limit", type=int, help="process the first N rows of the split")
    p.add_argument("--upload-batch-size", type=int, default=10000, help="rows per uploaded shard (10000)")
    p.add_argument("--resume", action="store_true", help="continue after the last uploaded shard")
    p.add_argument("--output-name", help="output folder under <remote>/datasets/ (default: from the source)")
    p.add_argument("--log-file", type=Path)
    _pipeline_options(p)

    p = sub.add_parser("doctor", help="check that this node can run the pipeline (PASS/FAIL/SKIP per check)")
    p.add_argument("--offline", action="store_true", help="never download the model (as in the container)")
    p.add_argument("--require-gpu", action="store_true", help="a node without a CUDA GPU fails")
    p.add_argument("--skip", default="", help="comma-separated checks not to run, e.g. database,destination")
    _pipeline_options(p)

    p = sub.add_parser("init-db", help="create or migrate the progress schema")
    p.add_argument("--dsn")

    p = sub.add_parser("make-tiny-model", help="write a tiny random-weight Whisper model (tests, demo)")
    p.add_argument("output", type=Path)

    p = sub.add_parser("make-sample-day", help="write a day of espeak-ng sample archives")
    p.add_argument("root", type=Path)
    p.add_argument("day")
    p.add_argument("--archives", type=int, default=2)
    p.add_argument("--members", type=int, default=6)

    p = sub.add_parser(
        "bench", help="time the streaming pipeline against the sequential flow and the transcriber alone"
    )
    p.add_argument("--members", type=int, default=48, help="members of the synthetic archive (48)")
    p.add_argument("--archive", type=Path, help="benchmark this .tar.xz instead of a synthetic one")
    p.add_argument("--large-factor", type=int, default=4, help="memory run on this many copies (4)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds; medians are reported (3)")
    p.add_argument("--work-dir", type=Path, default=Path(".bench"), help="inputs, scratch, outputs")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    _pipeline_options(p)

    p = sub.add_parser("demo", help="generate a sample day and process it with embedded defaults")
    p.add_argument("--state-dir", type=Path, default=Path(".demo"))
    p.add_argument("--day", default="2025-01-25")
    p.add_argument("--archives", type=int, default=2)
    p.add_argument("--members", type=int, default=6)
    _pipeline_options(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose, getattr(args, "log_file", None))
    if args.command in ("doctor", "status") and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # their output is the report
    try:
        return int(_dispatch(args))
    except PipelineError as exc:
        print(f"streaming-pipeline: error: {exc}", file=sys.stderr)
        log.debug("details", exc_info=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("streaming-pipeline: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "process-tar":
        return _process_tar(args)
    if args.command == "process-day":
        config = _config(args)
        return run_day(config, parse_day(args.day), args.executor, environ())
    if args.command == "status":
        return _status(args)
    if args.command == "finalize-day":
        return _finalize_day(args)
    if args.command == "export":
        return _export(args)
    if args.command == "process-dataset":
        return _process_dataset(args)
    if args.command == "doctor":
        from .doctor import report, run_checks

        skip = frozenset(filter(None, args.skip.split(",")))
        checks = run_checks(_config(args), offline=args.offline, require_gpu=args.require_gpu, skip=skip)
        text, rc = report(checks)
        print(text)
        return rc
    if args.command == "init-db":
        return _init_db(args)
    if args.command == "make-tiny-model":
        from .tiny_model import generate_tiny_model

        print(generate_tiny_model(args.output))
        return 0
    if args.command == "make-sample-day":
        from .samples import make_sample_day

        for path in make_sample_day(
            args.root, parse_day(args.day).isoformat(), archives=args.archives, members=args.members
        ):
            print(path)
        return 0
    if args.command == "demo":
        return _demo(args)
    if args.command == "bench":
        return _bench(args)
    raise ConfigError(f"unknown command {args.command}")  # pragma: no cover


def _open_store(config: PipelineConfig, *, patient: bool = False) -> ProgressStore:
    """Reports give up after ~2 s of database trouble; workers (`patient`) ride out ~15 s, a
    server restart, before their run fails. Both fail at once if it is unreachable at the start."""
    from .store import ProgressStore

    if not config.dsn:
        raise ConfigError("no database: set --dsn, PIPELINE_DSN or DB_CREDS")
    store = ProgressStore(config.dsn) if patient else ProgressStore(config.dsn, attempts=3, backoff_max=2.0)
    store.check()  # one clear line, password-free, before any work
    return store


def _init_db(args: argparse.Namespace) -> int:
    config = _config(args)
    store = _open_store(config)
    version = store.init_schema()
    print(f"schema at version {version} ({config.redacted_dsn()})")
    return 0


def preflight(config: PipelineConfig, archive: Path) -> None:
    """Everything that can be wrong with an invocation, checked before any work starts."""
    from .archive import ensure_writable_dir
    from .transcribe import local_model_dir
    from .upload import Destination

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


def install_stop_handlers(stop: Callable[[str], None], on_second: Callable[[], None] | None = None) -> None:
    """USR1 (Slurm's time-limit warning), TERM and INT ask for a clean stop; a second one exits now.

    The handler only sets flags (no pool shutdown, no locks, no logging from inside it).
    """
    fired: list[str] = []

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if fired:
            os.write(2, f"streaming-pipeline: second signal ({name}): exiting now\n".encode())
            if on_second is not None:
                on_second()
            os._exit(128 + signum)
        fired.append(name)
        os.write(2, f"streaming-pipeline: {name}: finishing in-flight work, then stopping\n".encode())
        stop(f"stopped by {name}")

    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _process_tar(args: argparse.Namespace) -> int:
    from .day import check_slot
    from .lock import ArchiveBusy, ArchiveLock
    from .transcribe import Transcriber
    from .worker import ArchiveWorker

    day = parse_day(args.day)
    slot = check_slot(args.slot)
    config = _config(args)
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
    )
    install_stop_handlers(worker.request_stop)
    lock = ArchiveLock(
        config.dsn,
        worker.key,
        path=str(worker.archive_path),
        host=socket.gethostname(),
        pid=os.getpid(),
        slurm_job_id=config.slurm_job_id,
        on_lost=worker.request_stop,
    )
    try:
        with lock:
            result = worker.run()
    except ArchiveBusy as busy:
        print(f"{busy}; not starting a second worker")
        return 0
    finally:
        store.close()
    print(result.summary_line())
    if result.interrupted:
        if config.slurm_job_id:
            from .slurm import SlurmClient, requeue_self

            requeue_self(config.slurm_job_id, SlurmClient(environ()))
        return EXIT_INTERRUPTED
    return 0 if result.ok else 1


def run_day(config: PipelineConfig, day: dt.date, executor: str, env: Mapping[str, str]) -> int:
    """`process-day`: register the day, then submit (Slurm) or run (local) what is not done."""
    from .day import day_report, discover, finalize_day, format_report, plan_day

    archives = discover(config.input_root, day)
    if executor == "local":
        preflight(config, archives[0].path)
    store = _open_store(config)
    try:
        store.init_schema()
        plan = plan_day(store, day, archives)
        print(plan.describe(), flush=True)
        if plan.todo and executor == "slurm":
            return _submit_slurm(config, day, plan, store, env)
        if plan.todo:
            return _run_local(config, day, plan, store, env)
        if plan.busy:  # their workers record the outcome; finalizing now would call it incomplete
            print(format_report(day_report(store, day)))
            return 0
        report = finalize_day(store, day, job_id=config.slurm_job_id)
        print(format_report(report))
        return 0 if report["totals"]["complete"] else 1
    finally:
        store.close()


def _submit_slurm(
    config: PipelineConfig, day: dt.date, plan: DayPlan, store: ProgressStore, env: Mapping[str, str]
) -> int:
    from .slurm import SlurmClient, hpc_dir, submit_day

    # The controller's own job variables must not leak into its workers' submissions; the
    # settings travel as PIPELINE_* variables, which sbatch exports to the jobs.
    clean_env = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    client = SlurmClient({**clean_env, **config_env(config)}, secrets=(dsn_password(config.dsn),))
    sub = submit_day(config, day, plan.todo, scripts=hpc_dir(config.hpc_dir), client=client)
    store.record_day(
        day,
        state="submitted",
        archives=len(plan.archives),
        submitted=sub.tasks,
        executor="slurm",
        array_job_id=sub.array_job_id,
        finalize_job_id=sub.finalize_job_id,
        submitted_at=dt.datetime.now(dt.UTC),
        finalized_at=None,
    )
    logs = config.log_dir.resolve()
    print(
        f"submitted job array {sub.array_job_id} ({sub.tasks} archives, "
        f"at most {config.max_parallel} at a time) and finalize job {sub.finalize_job_id}\n"
        f"  squeue -j {sub.array_job_id},{sub.finalize_job_id}\n"
        f"  tail -f {logs}/stream_tar_{day}_*.out\n"
        f"  streaming-pipeline status {day}"
    )
    return 0


def _run_local(
    config: PipelineConfig, day: dt.date, plan: DayPlan, store: ProgressStore, env: Mapping[str, str]
) -> int:
    from .day import finalize_day, format_report
    from .local_executor import LocalExecutor

    executor = LocalExecutor(config, env)
    install_stop_handlers(lambda _reason: executor.stop(), on_second=executor.signal_workers)
    store.record_day(
        day,
        state="submitted",
        archives=len(plan.archives),
        submitted=len(plan.todo),
        executor="local",
        submitted_at=dt.datetime.now(dt.UTC),
        finalized_at=None,
    )
    print(f"logs: {config.log_dir.resolve()}/stream_tar_{day}_*_{executor.job_id}.out", flush=True)
    codes = executor.run(day, plan.todo)
    report = finalize_day(store, day, job_id=None)
    print(format_report(report))
    if report["totals"]["complete"]:
        return 0
    return EXIT_INTERRUPTED if EXIT_INTERRUPTED in codes.values() else 1


def _status(args: argparse.Namespace) -> int:
    from .day import day_report, format_report, report_json
    from .store import SCHEMA_VERSION

    day = parse_day(args.day)
    store = _open_store(_config(args))
    try:  # read-only: a monitoring user need not be allowed to migrate
        version = store.schema_version()
        if version < SCHEMA_VERSION:
            raise ConfigError(
                f"schema at version {version}, not {SCHEMA_VERSION}: run streaming-pipeline init-db"
            )
        report = day_report(store, day)
    finally:
        store.close()
    if args.json:
        print(report_json(report))
    elif not report["archives"]:
        print(f"no archives recorded for {day} (submit it with: streaming-pipeline process-day {day})")
    else:
        print(format_report(report))
    return 0 if report["archives"] else 1


def _finalize_day(args: argparse.Namespace) -> int:
    from .day import finalize_day, format_report

    config = _config(args)
    store = _open_store(config)
    try:
        store.init_schema()
        report = finalize_day(store, parse_day(args.day), job_id=config.slurm_job_id)
    finally:
        store.close()
    print(format_report(report))
    return 0 if report["totals"]["complete"] else 1


def _export(args: argparse.Namespace) -> int:
    from .export import DayExporter
    from .shards import parse_size
    from .store import SCHEMA_VERSION

    config = _config(args)
    day = parse_day(args.day)
    shard_size = parse_size(args.shard_size)
    store = _open_store(config, patient=True)
    try:
        if store.schema_version() < SCHEMA_VERSION:
            store.init_schema()
        exporter = DayExporter(
            config, store, day, out=args.out, shard_rows=args.shard_rows, shard_size=shard_size
        )
        result = exporter.run()
    finally:
        store.close()
    print(
        f"exported {result.rows} members of {day} ({result.audio_s / 3600:.3f} h) "
        f"in {len(result.shards)} shards to {result.output}"
    )
    return 0


def _process_dataset(args: argparse.Namespace) -> int:
    from .dataset import DatasetJob, DatasetWorker, resolve_source
    from .lock import RunLock
    from .transcribe import Transcriber, local_model_dir

    config = _config(args)
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
    worker = DatasetWorker(config, job, store=store, transcriber_factory=Transcriber)
    install_stop_handlers(worker.request_stop)
    try:
        with RunLock(config.dsn, job.run):
            result = worker.run()
    finally:
        store.close()
    print(result.summary_line())
    if result.state == "interrupted":
        return EXIT_INTERRUPTED
    return 0 if result.ok else 1


def _bench(args: argparse.Namespace) -> int:
    """Defaults fit a small machine and the generated model; flags and PIPELINE_* override them."""
    from .bench import BenchPlan, format_report, run_bench
    from .embedded_pg import EmbeddedPostgres
    from .tiny_model import generate_tiny_model
    from .transcribe import Transcriber

    if args.members < 1 or args.large_factor < 2 or args.repeat < 1:
        raise ConfigError("--members and --repeat must be at least 1, --large-factor at least 2")
    work = args.work_dir.resolve()
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
        model_dir = work / "tiny-whisper"
        if not (model_dir / "model.bin").exists():
            generate_tiny_model(model_dir)
        defaults |= {"model": str(model_dir), "temperatures": "0"}  # see the demo
    config = build_config(cli, env, defaults)
    if not config.dsn:
        config = replace(config, dsn=EmbeddedPostgres(work / "postgres").start())
    store = _open_store(config)
    store.init_schema()
    store.close()
    plan = BenchPlan(
        work_dir=work,
        members=args.members,
        archive=args.archive,
        large_factor=args.large_factor,
        repeat=args.repeat,
        json_path=args.json,
    )
    print(format_report(run_bench(config, plan, Transcriber)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The README's first command: a sample day through the local executor, nothing to configure."""
    from .embedded_pg import EmbeddedPostgres
    from .samples import make_sample_day
    from .tiny_model import generate_tiny_model

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
        model_dir = state / "tiny-whisper"
        if not (model_dir / "model.bin").exists():
            generate_tiny_model(model_dir)
        # A random model fails every threshold: no fallback decoding.
        defaults = {"model": str(model_dir), "temperatures": "0"}
        print("model: a tiny random-weight Whisper (no model given; transcripts are noise): pass --model DIR")
    if not (cli.get("dsn") or env.get("PIPELINE_DSN") or env.get("DB_CREDS")):
        overrides["dsn"] = EmbeddedPostgres(state / "postgres").start()
    config = build_config({**overrides, **cli}, env, defaults)
    day = parse_day(args.day)
    if not sorted((state / "input" / day.isoformat()).glob("*.tar.xz")):
        make_sample_day(state / "input", day.isoformat(), archives=args.archives, members=args.members)
    rc = run_day(config, day, "local", env)
    print(f"\nresults: {config.remote}/{day}/  (FLAC + JSON per member)")
    query = "SELECT slot, status, count(*) FROM audio_files GROUP BY 1, 2"
    print(f'progress: psql "{config.redacted_dsn()}" -c "{query}"')
    print(f"status:   PIPELINE_DSN='{config.redacted_dsn()}' streaming-pipeline status {day}")
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

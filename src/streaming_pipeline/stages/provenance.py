"""What made a transcript: the model's identity, the decoder and its options, the software.

A model named by a local CTranslate2 directory is identified by a fingerprint of its files'
contents (`sha256:` + 16 hex digits), so that replacing the weights under the same directory
name counts as another model; a hub model by its name and the revision the cache resolved.
Hashing a large-v3 directory (3 GB) takes seconds: it is done once per process and remembered
on disk, keyed by each file's size and modification time.

`Provenance.key` says whether two transcripts were made the same way: the model's identity and
the settings that change what is decoded (decoder, beam, temperatures, VAD, timestamps, forced
language, decode length). Device, compute type and the software versions are recorded but not
in the key: moving a month's re-run from CPU to GPU, or upgrading the package, does not make
every transcript stale.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..config import PipelineConfig, parse_temperatures

log = logging.getLogger(__name__)

KEY_FIELDS = (
    "model_id", "decoder", "beam_size", "temperatures", "vad", "timestamps", "language", "max_new_tokens",
    "language_rule",
)  # fmt: skip
# What transcripts recorded before the rule was recorded were made with: one language a member.
PER_MEMBER_RULE = "per member: detected on its first window"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Provenance:
    model: str  # as the user named it: a directory's name or a hub id
    model_id: str  # sha256:<16 hex> of a local directory's files, or hub:<name>@<revision>
    decoder: str  # batched or per-member
    beam_size: int
    temperatures: tuple[float, ...]
    vad: bool
    timestamps: str
    language: str | None  # forced; None: detected per member
    max_new_tokens: int | None
    device: str
    compute_type: str
    package_version: str
    faster_whisper_version: str
    language_rule: str = PER_MEMBER_RULE  # how each segment's language was chosen

    @property
    def key(self) -> str:
        """Equal for transcripts made by the same model with the same decoding settings."""
        wanted = {name: getattr(self, name) for name in KEY_FIELDS}
        text = json.dumps(wanted, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "temperatures": list(self.temperatures), "key": self.key}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Provenance:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["temperatures"] = tuple(float(t) for t in values.get("temperatures", ()))
        return cls(**values)


def model_identity(model: str, local_dir: Path | None) -> str:
    """`sha256:<hex>` of a local model directory, `hub:<name>@<revision>` of a hub model (the
    revision its cache resolved; `unknown` when the cache cannot say)."""
    if local_dir is not None:
        return "sha256:" + fingerprint(local_dir.resolve())
    return f"hub:{model}@{_hub_revision(model)}"


@functools.cache
def fingerprint(directory: Path) -> str:
    """A hash of every regular file's name and content under `directory` (16 hex digits),
    remembered on disk while no file's size or modification time changes."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    stamp = [(str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    cache = _cache_dir() / (hashlib.sha256(repr((str(directory), stamp)).encode()).hexdigest() + ".txt")
    try:
        return cache.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    value = digest.hexdigest()[:16]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(value)
    except OSError as exc:  # a read-only home: computed again by the next job
        log.info("model fingerprint not cached (%s)", exc)
    return value


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "streaming-pipeline" / "model-fingerprints"


def _hub_revision(name: str) -> str:
    try:
        from faster_whisper.utils import download_model

        return Path(download_model(name, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - the revision is a record, not a requirement
        return "unknown"


def describe(
    config: PipelineConfig, *, model_name: str, decoder: str, device: str, compute_type: str
) -> Provenance:
    """The provenance of what a decoder built from `config` makes (once per decoder)."""
    import faster_whisper

    from .. import __version__
    from ..errors import ConfigError
    from .transcribe import local_model_dir

    try:
        local = local_model_dir(config.model)
    except ConfigError:  # a stand-in transcriber's configuration names no model directory
        local = None
    return Provenance(
        model=model_name,
        model_id=model_identity(config.model, local),
        decoder=decoder,
        beam_size=config.beam_size,
        temperatures=parse_temperatures(config.temperatures),
        vad=config.vad,
        timestamps=config.timestamps,
        language=config.language,
        max_new_tokens=config.max_new_tokens,
        device=device,
        compute_type=compute_type,
        package_version=__version__,
        faster_whisper_version=faster_whisper.__version__,
        language_rule=language_rule(config, decoder),
    )


def language_rule(config: PipelineConfig, decoder: str) -> str:
    """How the segments' languages are chosen: forced, per stretch of speech (the batched
    decoder), or once per member (faster-whisper's own `transcribe`)."""
    from .decoding import LANGUAGE_RULE

    if config.language:
        return f"forced: {config.language}"
    return LANGUAGE_RULE if decoder == "batched" else PER_MEMBER_RULE


def planned(config: PipelineConfig) -> Provenance:
    """What a worker given `config` will record, device aside, without loading the model (the
    `retranscribe` controller compares keys with it)."""
    from .decoder import decoder_kind
    from .transcribe import local_model_dir

    local = local_model_dir(config.model)
    return describe(
        config,
        model_name=local.name if local else config.model,
        decoder=decoder_kind(config),
        device="",
        compute_type="",
    )

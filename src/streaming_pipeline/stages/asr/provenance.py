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
import logging
import os
from pathlib import Path

from ... import __version__
from ...errors import ConfigError
from ...transcript import KEY_FIELDS, PER_MEMBER_RULE, Provenance
from .loader import local_model_dir
from .options import DecodeOptions
from .policy import LANGUAGE_RULE
from .protocol import TranscriberLike

__all__ = ["KEY_FIELDS", "PER_MEMBER_RULE", "Provenance", "describe", "of_transcriber", "planned"]

log = logging.getLogger(__name__)

_CHUNK = 8 << 20


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


def describe(options: DecodeOptions, *, model_name: str, device: str, compute_type: str) -> Provenance:
    """The provenance of what a decoder given `options` makes (once per decoder)."""
    import faster_whisper

    try:
        local = local_model_dir(options.model)
    except ConfigError:  # a stand-in transcriber's configuration names no model directory
        local = None
    return Provenance(
        model=model_name,
        model_id=model_identity(options.model, local),
        decoder=options.decoder,
        beam_size=options.beam_size,
        temperatures=options.temperatures,
        vad=options.vad,
        timestamps=options.timestamps,
        language=options.language,
        max_new_tokens=options.max_new_tokens,
        device=device,
        compute_type=compute_type,
        package_version=__version__,
        faster_whisper_version=faster_whisper.__version__,
        language_rule=language_rule(options),
    )


def language_rule(options: DecodeOptions) -> str:
    """How the segments' languages are chosen: forced, per stretch of speech (the batched
    decoder), or once per member (faster-whisper's own `transcribe`)."""
    if options.language:
        return f"forced: {options.language}"
    return LANGUAGE_RULE if options.decoder == "batched" else PER_MEMBER_RULE


def planned(options: DecodeOptions) -> Provenance:
    """What a worker given `options` will record, device aside, without loading the model (the
    `retranscribe` controller compares keys with it)."""
    local = local_model_dir(options.model)
    return describe(options, model_name=local.name if local else options.model, device="", compute_type="")


def of_transcriber(transcriber: TranscriberLike, options: DecodeOptions) -> Provenance:
    """The provenance of a decoder over `transcriber`."""
    device = transcriber.device
    return describe(
        options, model_name=transcriber.model_name, device=device.device, compute_type=device.compute_type
    )

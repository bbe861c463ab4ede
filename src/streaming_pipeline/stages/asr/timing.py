"""How a row's tokens become timed segments, and how times return to the member's timeline.

Pure functions and a small mapping class, free of any model or threads: a window's tokens split
at its timestamps, cross-attention alignments turned into words, the speech-only timeline mapped
back to the member's own, and segments that follow their words (stable-ts's idea: a segment is
where its words are, and is split where they pause).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Whisper's own rule, a plain function: how punctuation joins its word.
from faster_whisper.transcribe import merge_punctuations

from ...transcript import Segment, Word
from .policy import (
    APPEND_PUNCTUATIONS,
    ENCODER_FRAMES_PER_SECOND,
    JOIN_GAP_S,
    PREPEND_PUNCTUATIONS,
    SAMPLE_RATE,
    SENTENCE_END_MARKS,
    TIME_PRECISION,
    Attempt,
)


# -- timed segments ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """Text tokens between two timestamps of one window, in the window's own seconds."""

    start: float
    end: float
    tokens: tuple[int, ...]


def split_by_timestamps(
    tokens: Sequence[int], *, timestamp_begin: int, eot: int, duration: float
) -> list[Span]:
    """A window's tokens as timed spans, as the sequential path splits them at timestamp pairs.

    Unlike faster-whisper's batched pipeline, text after the last timestamp is kept, ending at
    the window's end (a window has no next window to carry it). Text before any timestamp starts
    where the previous span ended. Times are clamped to the window: a timestamp past its speech
    (the padding) cannot place text outside the member.
    """
    spans: list[Span] = []
    opened: float | None = None  # time the current span opened at
    text: list[int] = []
    last_end = 0.0

    def clamp(t: float) -> float:
        return min(max(t, 0.0), duration)

    for token in tokens:
        if token >= timestamp_begin:
            t = clamp((token - timestamp_begin) * TIME_PRECISION)
            if text:
                start = opened if opened is not None else last_end
                spans.append(Span(start, max(t, start), tuple(text)))
                last_end, text, opened = max(t, start), [], None
            else:
                opened = t
        elif token < eot:
            text.append(token)
    if text:
        start = opened if opened is not None else last_end
        spans.append(Span(start, max(duration, start), tuple(text)))
    return spans


def seek_point(tokens: Sequence[int], *, timestamp_begin: int) -> tuple[float, int] | None:
    """Where the sequential path would decode the window again from, and how many tokens come
    before that point: the last timestamp of the last complete segment, when the tokens hold a
    timestamp pair and do not end on a single timestamp (which says: no speech after it).
    `_split_segments_by_timestamps`' seek rule, for a window whose decode stopped early or ran
    out mid-sentence."""
    single_ending = len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]
    pairs = [
        i for i in range(1, len(tokens)) if tokens[i] >= timestamp_begin and tokens[i - 1] >= timestamp_begin
    ]
    if not pairs or single_ending:
        return None
    last = pairs[-1]
    return (tokens[last - 1] - timestamp_begin) * TIME_PRECISION, last


def ended_at(tokens: Sequence[int], *, timestamp_begin: int) -> float | None:
    """The second a decode ended on with a single timestamp (text, then `<|t|>`, then the end):
    the model's word that nothing after `t` is speech in the language it was decoding."""
    if len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]:
        return (tokens[-1] - timestamp_begin) * TIME_PRECISION
    return None


def words_from_alignment(
    words: Sequence[str],
    word_tokens: Sequence[Sequence[int]],
    alignments: Sequence[tuple[int, int]],
    token_probs: Sequence[float],
) -> list[dict[str, Any]]:
    """Word start/end/probability from a cross-attention alignment (CTranslate2's
    `Whisper.align`: pairs of text-token index and encoder frame), as faster-whisper's
    `find_alignment`: a word starts at the frame where the path first reaches its first token.
    `words`/`word_tokens` are the tokenizer's `split_to_word_tokens(text_tokens + [eot])`."""
    if len(word_tokens) <= 1 or not alignments:
        return []
    text_indices = np.array([pair[0] for pair in alignments])
    time_indices = np.array([pair[1] for pair in alignments])
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / ENCODER_FRAMES_PER_SECOND
    if len(jump_times) < boundaries[-1] + 1:  # a path that skipped tokens: no reliable times
        return []
    starts = jump_times[boundaries[:-1]]
    ends = jump_times[boundaries[1:]]
    probs = [float(np.mean(token_probs[i:j])) for i, j in itertools.pairwise(boundaries)]
    return [
        {"word": w, "tokens": list(t), "start": float(s), "end": float(e), "probability": p}
        for w, t, s, e, p in zip(words, word_tokens, starts, ends, probs, strict=False)
    ]


def _median_word_duration(alignment: list[dict[str, Any]]) -> tuple[float, float]:
    durations = np.array([w["end"] - w["start"] for w in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    return median, median * 2


def time_words(spans: Sequence[Span], alignment: list[dict[str, Any]]) -> list[tuple[Span, list[Word]]]:
    """Each span with its words (window seconds), and the span's start and end moved to its
    words', with faster-whisper's repairs: a word at a sentence boundary or after a pause is at
    most twice the median word long, and a first or last word far longer than its span's
    timestamp gives way to the timestamp."""
    median, longest = _median_word_duration(alignment)
    if median > 0:
        for i in range(1, len(alignment)):
            if alignment[i]["end"] - alignment[i]["start"] > longest:
                if alignment[i]["word"] in SENTENCE_END_MARKS:
                    alignment[i]["end"] = alignment[i]["start"] + longest
                elif alignment[i - 1]["word"] in SENTENCE_END_MARKS:
                    alignment[i]["start"] = alignment[i]["end"] - longest
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    out: list[tuple[Span, list[Word]]] = []
    index = 0
    last_speech = 0.0
    for span in spans:
        consumed = 0
        words: list[Word] = []
        while index < len(alignment) and consumed < len(span.tokens):
            timing = alignment[index]
            if timing["word"]:
                words.append(Word(timing["start"], timing["end"], timing["word"], timing["probability"]))
            consumed += len(timing["tokens"])
            index += 1
        start, end = span.start, span.end
        if words:
            first, last = words[0], words[-1]
            if first.end - last_speech > median * 4 and (
                first.end - first.start > longest
                or (len(words) > 1 and words[1].end - first.start > longest * 2)
            ):
                if len(words) > 1 and words[1].end - words[1].start > longest:
                    boundary = max(words[1].end / 2, words[1].end - longest)
                    first.end = words[1].start = boundary
                first.start = max(0.0, first.end - longest)
            if start < first.end and start - 0.5 > first.start:
                first.start = max(0.0, min(first.end - median, start))
            else:
                start = first.start
            if end > last.start and end + 0.5 < last.end:
                last.end = max(last.start + median, end)
            else:
                end = last.end
            last_speech = end
        out.append((Span(start, end, span.tokens), words))
    return out


# -- back to the member's timeline ------------------------------------------------------------------
class SpeechTimeline:
    """Maps seconds of the speech-only timeline (VAD regions joined) back to the member's own
    seconds, silences included: faster-whisper's `SpeechTimestampsMap`, without rounding."""

    def __init__(self, regions: Sequence[dict[str, int]], sample_rate: int = SAMPLE_RATE) -> None:
        self._ends: list[float] = []  # speech-timeline second where each region ends
        self._silence_before: list[float] = []
        previous_end = silent = 0
        for region in regions:
            silent += region["start"] - previous_end
            previous_end = region["end"]
            self._ends.append((region["end"] - silent) / sample_rate)
            self._silence_before.append(silent / sample_rate)

    def region(self, t: float, *, is_end: bool = False) -> int:
        """The region `t` lies in; a time on a boundary belongs to the next region unless it is
        an end."""
        if not self._ends:
            return -1
        i = bisect.bisect_left(self._ends, t) if is_end else bisect.bisect_right(self._ends, t)
        return min(i, len(self._ends) - 1)

    def original(self, t: float, *, region: int | None = None, is_end: bool = False) -> float:
        if not self._ends:
            return t
        i = self.region(t, is_end=is_end) if region is None else region
        return t + self._silence_before[i]

    def restore(self, segment: Segment) -> None:
        """A segment's times (and its words', each by its midpoint's region so a word never
        straddles a removed silence) in the member's seconds; a segment with words spans them."""
        if segment.words:
            for word in segment.words:
                region = self.region((word.start + word.end) / 2)
                word.start = self.original(word.start, region=region)
                word.end = self.original(word.end, region=region)
            segment.start, segment.end = segment.words[0].start, segment.words[-1].end
        else:
            segment.start = self.original(segment.start)
            segment.end = self.original(segment.end, is_end=True)


# A segment whose words are further apart than this is split there: a subtitle does not stay on
# screen over a pause, and a quote cut from a segment's times holds no dead air.
PAUSE_SPLIT_S = JOIN_GAP_S


def split_at_pauses(segment: Segment, pause: float = PAUSE_SPLIT_S) -> list[Segment]:
    """`segment` (with words) cut wherever one word ends more than `pause` seconds before the
    next starts; each part's text is its words', and its times its first and last word's."""
    words = segment.words
    if not words or len(words) < 2:
        return [segment]
    groups: list[list[Word]] = [[words[0]]]
    for previous, word in itertools.pairwise(words):
        if word.start - previous.end > pause:
            groups.append([])
        groups[-1].append(word)
    if len(groups) == 1:
        return [segment]
    return [
        Segment(
            group[0].start,
            group[-1].end,
            "".join(w.word for w in group).strip(),
            segment.avg_logprob,
            segment.no_speech_prob,
            segment.temperature,
            segment.compression_ratio,
            group,
            segment.language,
        )
        for group in groups
    ]


# Whisper's repetition loop: over babble or crowd noise it decodes one line again and again.
# A line said again within REPEAT_GAP_S of itself is kept only where the audio can hold it:
# at most MAX_CHARS_PER_S letters a second (read and conversational speech on this project's
# sets stays under 24; the loop's copies over a restaurant's noise came at 30-38), and never a
# third time in a row when it has REPEAT_MIN_WORDS words or more (people answer "no, no, no",
# they do not say a sentence three times over).
REPEAT_GAP_S = 2.0
MAX_CHARS_PER_S = 25.0
REPEAT_MIN_WORDS = 3


def _letters(text: str) -> str:
    return "".join(c for c in text.casefold() if c.isalnum())


def drop_unbacked_repeats(segments: list[Segment]) -> list[Segment]:
    """`segments` (sorted by start) without the copies of a repeated line that the audio does not
    back (see REPEAT_GAP_S): a copy too short for its letters, or the third and later of a
    sentence's run. A line said once is never touched."""
    ordered = sorted(segments, key=lambda s: (s.start, s.end))
    runs: list[list[Segment]] = []
    for segment in ordered:
        key = _letters(segment.text)
        last = runs[-1][-1] if runs else None
        if (
            key
            and last is not None
            and _letters(last.text) == key
            and segment.start - last.end <= REPEAT_GAP_S
        ):
            runs[-1].append(segment)
        else:
            runs.append([segment])
    out: list[Segment] = []
    for run in runs:
        if len(run) == 1:
            out.extend(run)
            continue
        letters = len(_letters(run[0].text))
        backed = [s for s in run if letters <= MAX_CHARS_PER_S * max(s.end - s.start, 0.0)]
        if len(run[0].text.split()) >= REPEAT_MIN_WORDS:
            backed = backed[:2] if len(run) < 3 else backed[:1]
        out.extend(backed)
    return out


def finalize_segments(segments: list[Segment], duration: float) -> list[Segment]:
    """The guarantees every transcript keeps, whichever decoder made it: segments sorted, not
    overlapping, within [0, duration]; each word within its segment and after the previous word;
    times to the millisecond; segments without text dropped."""
    out: list[Segment] = []
    previous_end = 0.0

    def clamp(t: float, low: float, high: float) -> float:
        return min(max(round(t, 3), low), high)

    for seg in sorted(segments, key=lambda s: (s.start, s.end)):
        if not seg.text:
            continue
        seg.start = clamp(seg.start, previous_end, duration)
        seg.end = clamp(seg.end, seg.start, duration)
        if seg.words is not None:
            words = [w for w in seg.words if w.word.strip()]
            last = seg.start
            for word in words:
                word.start = clamp(word.start, last, seg.end)
                word.end = clamp(word.end, word.start, seg.end)
                last = word.start
            seg.words = words
        previous_end = seg.end
        out.append(seg)
    return out


def speech_segments(segments: list[Segment], duration: float, *, keep_words: bool) -> list[Segment]:
    """A member's segments (on its own timeline) as its transcript holds them: each split at
    its pauses, the repeats its audio does not back dropped, made to keep `finalize_segments`'s
    guarantees, and without their words unless `keep_words` (`segment` mode times its segments
    by their words, then drops the words)."""
    parts = [part for segment in segments for part in split_at_pauses(segment)]
    out = finalize_segments(drop_unbacked_repeats(parts), duration)
    if not keep_words:
        for segment in out:
            segment.words = None
    return out


def row_segments(
    spans: Sequence[Span],
    texts: Sequence[str],
    attempt: Attempt,
    *,
    offset: float,
    words: Sequence[list[Word]] | None = None,
    language: str | None = None,
) -> list[Segment]:
    """A window's spans as segments on the speech timeline (`offset`: speech seconds before the
    window), with the window's quality figures and language, and its words where it was aligned."""
    out = []
    for i, (span, text) in enumerate(zip(spans, texts, strict=True)):
        timed = None
        if words is not None:
            timed = [Word(w.start + offset, w.end + offset, w.word, w.probability) for w in words[i]]
        out.append(
            Segment(
                span.start + offset,
                span.end + offset,
                text,
                attempt.avg_logprob,
                attempt.no_speech_prob,
                attempt.temperature,
                attempt.compression_ratio,
                timed,
                language,
            )
        )
    return out

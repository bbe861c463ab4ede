"""The decoders' policy, free of any model, threads, database or settings.

What a window's decode is worth (faster-whisper's quality guards and its choice among fallback
attempts), how a member's speech becomes rows, which language each row is decoded in, and which
rows share a `generate` call (`RowQueue`). How tokens become timed segments is `timing.py`.
`batched.BatchedDecoder` keeps the threads and `calls.WhisperCalls` the model; everything here
is called by fast unit tests with plain numbers, the way faster-whisper keeps
`get_compression_ratio` and `collect_chunks` apart from its model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Whisper's own rule, a plain function: the ratio the repetition guard reads.
from faster_whisper.transcribe import get_compression_ratio

SAMPLE_RATE = 16000
WINDOW_S = 30
# faster-whisper's defaults for the guards of its sequential path.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# Whisper's clock: a timestamp token is 20 ms; the encoder (what alignments index) has 50 frames/s.
TIME_PRECISION = 0.02
ENCODER_FRAMES_PER_SECOND = 50
# The first timestamp of a window may be at most this late (faster-whisper's `max_initial_timestamp`).
MAX_INITIAL_TIMESTAMP = 1.0
MAX_INITIAL_TIMESTAMP_INDEX = round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION)
# Punctuation attached to its neighbour word, as faster-whisper's `transcribe` defaults.
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"


# -- quality guards -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One decode of one window at one temperature."""

    tokens: tuple[int, ...]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float


def make_attempt(
    tokens: Sequence[int], score: float, no_speech_prob: float, text: str, temperature: float
) -> Attempt:
    """`score` is CTranslate2's length-normalised log-probability; faster-whisper turns it into an
    average over the tokens plus the end-of-text token."""
    n = len(tokens)
    avg_logprob = score * n / (n + 1)
    return Attempt(
        tuple(tokens), text, avg_logprob, no_speech_prob, float(get_compression_ratio(text)), temperature
    )


def needs_fallback(attempt: Attempt) -> bool:
    """`generate_with_fallback`'s rule: too repetitive or too unlikely, unless the window is
    silence (no temperature finds speech in it)."""
    failed = (
        attempt.compression_ratio > COMPRESSION_RATIO_THRESHOLD or attempt.avg_logprob < LOG_PROB_THRESHOLD
    )
    silence = attempt.no_speech_prob > NO_SPEECH_THRESHOLD and attempt.avg_logprob < LOG_PROB_THRESHOLD
    return failed and not silence


def final_attempt(attempts: Sequence[Attempt], *, last_temperature: bool) -> Attempt | None:
    """The attempt a window keeps, or None when the next temperature should be tried. When every
    temperature failed: the most likely of those below the compression threshold (of all, if none
    is), as faster-whisper picks."""
    latest = attempts[-1]
    if not needs_fallback(latest):
        return latest
    if not last_temperature:
        return None
    readable = [a for a in attempts if a.compression_ratio <= COMPRESSION_RATIO_THRESHOLD]
    return max(readable or attempts, key=lambda a: a.avg_logprob)


def resumed_kept(attempt: Attempt, language: str | None, ended_language: str | None) -> bool:
    """Whether the text decoded on the rest of a window, after the model said "no more speech"
    in `ended_language`, is kept: only when the rest is in another language and the first
    attempt passes the quality guards. The rest is a second opinion against the model's own
    word, so it gets no fallback temperatures: over sung music or a jingle they would find text."""
    return language != ended_language and not needs_fallback(attempt)


def is_silent(attempt: Attempt) -> bool:
    """Whisper's no-speech rule: a likely-silent window is dropped unless its text is likely."""
    return attempt.no_speech_prob > NO_SPEECH_THRESHOLD and not attempt.avg_logprob > LOG_PROB_THRESHOLD


# -- windows ------------------------------------------------------------------------------------
# VAD regions at most this far apart are decoded as one row of contiguous audio, the pause
# included; a longer gap always ends a row. So a row never holds audio from both sides of a
# gap, and no segment, word or cue of it can span one: times stay with the speech, and each
# stretch of speech gets its own language.
JOIN_GAP_S = 1.0


def speech_rows(regions: Sequence[dict[str, int]], max_samples: int, join_gap: int) -> list[dict[str, int]]:
    """The rows a member is decoded in, as contiguous [start, end) sample ranges: VAD regions
    joined while the gap between them is at most `join_gap` samples and the row stays within
    `max_samples`; a region longer than that is cut into pieces that fit."""
    rows: list[dict[str, int]] = []
    for region in regions:
        start, end = region["start"], region["end"]
        if rows and start - rows[-1]["end"] <= join_gap and end - rows[-1]["start"] <= max_samples:
            rows[-1] = {"start": rows[-1]["start"], "end": end}
            continue
        while end - start > max_samples:
            rows.append({"start": start, "end": start + max_samples})
            start += max_samples
        rows.append({"start": start, "end": end})
    return rows


# -- a language for each stretch of speech ---------------------------------------------------------
# A row is decoded in the language detected on it when the detection is sure (LANGUAGE_SURE), or
# likely (LANGUAGE_LIKELY) on at least LANGUAGE_MIN_S of audio; otherwise in its member's first
# row's language, so that a short or unclear stretch (a name, a laugh, a jingle) does not flip
# the language on its own, while a whole sentence in another language keeps its own.
LANGUAGE_SURE = 0.8
LANGUAGE_LIKELY = 0.5
LANGUAGE_MIN_S = 3.0
LANGUAGE_RULE = (
    f"per stretch of speech (rows joined over gaps <= {JOIN_GAP_S:g} s): the row's own language "
    f"when p >= {LANGUAGE_SURE:g}, or p >= {LANGUAGE_LIKELY:g} over >= {LANGUAGE_MIN_S:g} s; "
    "else the member's first row's"
)


def row_language(
    detected: tuple[str, float], duration: float, anchor: tuple[str, float] | None
) -> tuple[str, float]:
    """The language (and its probability) a row is decoded in: its own `detected` one when the
    detection is sure enough for a row of `duration` seconds, else the `anchor` (the member's
    first row's detection; None for the first row itself, which keeps its own)."""
    language, probability = detected
    sure = probability >= LANGUAGE_SURE or (probability >= LANGUAGE_LIKELY and duration >= LANGUAGE_MIN_S)
    if sure or anchor is None or anchor[0] == language:
        return language, probability
    return anchor


def main_language(spoken: Sequence[tuple[str | None, float, float]]) -> tuple[str | None, float]:
    """The member's language: the one with the most speech among (language, seconds,
    probability) of its stretches, with its speech-weighted probability; (None, 0) without any."""
    seconds: dict[str, float] = {}
    weighted: dict[str, float] = {}
    for language, duration, probability in spoken:
        if language is None:
            continue
        seconds[language] = seconds.get(language, 0.0) + duration
        weighted[language] = weighted.get(language, 0.0) + duration * probability
    if not seconds:
        return None, 0.0
    best = max(seconds, key=lambda lang: (seconds[lang], weighted[lang]))
    return best, weighted[best] / seconds[best] if seconds[best] > 0 else 0.0


class RowLike(Protocol):
    member: Any  # hashable, with a `language` (None until detected)
    index: int  # the window's place in its member
    duration: float
    waited: int


# Rows considered for one call: this many calls' worth from the head of the queue.
LOOKAHEAD_CALLS = 4
# Calls a row waiting for a fallback temperature may wait for company before it goes alone.
FALLBACK_MAX_WAIT_CALLS = 4


class RowQueue:
    """Windows waiting for a `generate` call: fresh ones in arrival order, and failed ones per
    fallback level. Which rows share a call is decided here; the caller holds the lock."""

    def __init__(self) -> None:
        self.fresh: list[Any] = []
        self.fallback: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        return len(self.fresh) + sum(map(len, self.fallback.values()))

    def add(self, row: RowLike) -> None:
        self.fresh.append(row)

    def retry(self, row: RowLike, level: int) -> None:
        row.waited = 0
        self.fallback.setdefault(level, []).append(row)

    def has_fallback(self) -> bool:
        return any(self.fallback.values())

    def clear(self) -> None:
        self.fresh.clear()
        self.fallback.clear()

    def drop(self, members: set[int]) -> None:
        """Forget the rows of members (by `id`) that failed or were cancelled."""
        self.fresh = [r for r in self.fresh if id(r.member) not in members]
        for level, waiting in self.fallback.items():
            self.fallback[level] = [r for r in waiting if id(r.member) not in members]

    def pack(self, limit: int) -> tuple[list[Any], int]:
        """Rows for the next call and their temperature level. Failed rows go first when they fill
        a call, when no fresh rows wait, or when they have waited `FALLBACK_MAX_WAIT_CALLS`;
        otherwise the oldest fresh row and those nearest to it in length (less padding), never
        a member's later window before its first when its language is still to be detected
        from that first window."""
        for level in sorted(self.fallback):
            waiting = self.fallback[level]
            if waiting and (
                len(waiting) >= limit or not self.fresh or waiting[0].waited >= FALLBACK_MAX_WAIT_CALLS
            ):
                rows, self.fallback[level] = waiting[:limit], waiting[limit:]
                self._age()
                return rows, level
        window = self.fresh[: limit * LOOKAHEAD_CALLS]
        head = window[0]
        chosen = [head]
        first_rows = {head.member} if head.index == 0 else set()
        for row in sorted(window[1:], key=lambda r: abs(r.duration - head.duration)):
            if len(chosen) == limit:
                break
            if row.member.language is None and row.index > 0 and row.member not in first_rows:
                continue
            chosen.append(row)
            if row.index == 0:
                first_rows.add(row.member)
        taken = set(map(id, chosen))
        self.fresh = [r for r in self.fresh if id(r) not in taken]
        self._age()
        return chosen, 0

    def _age(self) -> None:
        for waiting in self.fallback.values():
            for row in waiting:
                row.waited += 1

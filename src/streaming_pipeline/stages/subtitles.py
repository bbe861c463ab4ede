"""Subtitles from a member's timed segments: SRT and WebVTT, cut to the usual broadcast limits.

A cue holds at most two lines of at most 42 characters and lasts at most 7 s. Cues are cut at
word times when the transcript has words; otherwise a segment that does not fit one cue is
split at word boundaries of its text and the segment's time is shared out by characters (an
estimate: only `--timestamps word` knows when each word was said). A cue never spans two
segments. A single word longer than a line stands alone on its line. The cues' text, joined,
is the transcript's text word for word.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_S = 7.0


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


@dataclass(frozen=True)
class _Token:
    text: str
    start: float
    end: float


def wrap(words: Sequence[str], width: int = MAX_LINE_CHARS) -> list[str] | None:
    """`words` as at most two lines of at most `width` characters, the break where the two lines
    are most even; None when they do not fit. One word alone may be longer than a line."""
    text = " ".join(words)
    if len(text) <= width or len(words) == 1:
        return [text]
    best: tuple[int, list[str]] | None = None
    for i in range(1, len(words)):
        first, second = " ".join(words[:i]), " ".join(words[i:])
        if len(first) <= width and len(second) <= width:
            longest = max(len(first), len(second))
            if best is None or longest < best[0]:
                best = (longest, [first, second])
    return best[1] if best else None


def _fits(tokens: Sequence[_Token]) -> bool:
    return (
        tokens[-1].end - tokens[0].start <= MAX_CUE_S and wrap([t.text for t in tokens]) is not None
    ) or len(tokens) == 1


def _segment_tokens(segment: dict[str, Any]) -> list[_Token]:
    """The segment's words with their times: the aligned ones, else its text's words with the
    segment's span shared out by characters."""
    words = segment.get("words")
    if words:
        return [_Token(w["word"].strip(), w["start"], w["end"]) for w in words if w["word"].strip()]
    parts = segment["text"].split()
    if not parts:
        return []
    start, end = float(segment["start"]), float(segment["end"])
    total = sum(len(p) + 1 for p in parts)
    tokens, used = [], 0
    for part in parts:
        t0 = start + (end - start) * used / total
        used += len(part) + 1
        tokens.append(_Token(part, t0, start + (end - start) * used / total))
    return tokens


def cues(segments: Iterable[dict[str, Any]]) -> list[Cue]:
    """Greedy: a cue takes the next word while the cue still fits the limits."""
    out: list[Cue] = []
    for segment in segments:
        tokens = _segment_tokens(segment)
        cue: list[_Token] = []
        for token in tokens:
            if cue and not _fits([*cue, token]):
                out.append(_cue(cue))
                cue = []
            cue.append(token)
        if cue:
            out.append(_cue(cue))
    # Cues shown one after the other: a cue ends no later than the next one starts.
    for i in range(len(out) - 1):
        if out[i].end > out[i + 1].start:
            out[i] = Cue(out[i].start, max(out[i].start, out[i + 1].start), out[i].lines)
    return out


def _cue(tokens: list[_Token]) -> Cue:
    lines = wrap([t.text for t in tokens]) or [" ".join(t.text for t in tokens)]
    return Cue(tokens[0].start, max(tokens[-1].end, tokens[0].start), tuple(lines))


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _safe(line: str) -> str:
    """A cue line that cannot end the cue early or start markup: no blank lines, no `-->`, and in
    WebVTT `&` and `<` escaped (done by `to_vtt`)."""
    return line.replace("-->", "->")


def to_srt(items: Sequence[Cue]) -> str:
    blocks = [
        f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n" + "\n".join(_safe(x) for x in c.lines)
        for i, c in enumerate(items, 1)
    ]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def to_vtt(items: Sequence[Cue]) -> str:
    def escape(line: str) -> str:
        return _safe(line).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    blocks = [
        f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n" + "\n".join(escape(x) for x in c.lines)
        for c in items
    ]
    return "WEBVTT\n\n" + "\n\n".join(blocks) + ("\n" if blocks else "")


WRITERS = {"srt": to_srt, "vtt": to_vtt}


def render(segments: Iterable[dict[str, Any]], formats: Sequence[str]) -> dict[str, str]:
    """Each requested format's file text; nothing when the member has no speech."""
    items = cues(segments)
    if not items:
        return {}
    return {fmt: WRITERS[fmt](items) for fmt in formats}

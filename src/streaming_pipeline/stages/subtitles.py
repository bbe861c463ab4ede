"""Subtitles from a member's timed segments: SRT and WebVTT, cut to the usual broadcast limits.

A cue holds at most two lines of at most 42 characters and lasts at most 7 s. Cues are cut at
word times when the transcript has words; otherwise a segment that does not fit one cue is
split at word boundaries of its text and the segment's time is shared out by characters (an
estimate: only `--timestamps word` knows when each word was said). A cue never spans two
segments; a segment's cues are the fewest that fit, as even as possible, ending at a comma or
full stop where one is near. A single word longer than a line stands alone on its line. The
cues' text, joined, is the transcript's text word for word.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ..transcript import Segment

MAX_LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_S = 7.0


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]
    joiner: str = " "  # "" for text written without spaces
    speaker: str | None = None  # its segment's

    @property
    def text(self) -> str:
        return self.joiner.join(self.lines)


@dataclass(frozen=True)
class _Token:
    text: str
    start: float
    end: float


def wrap(words: Sequence[str], width: int = MAX_LINE_CHARS, joiner: str = " ") -> list[str] | None:
    """`words` as at most two lines of at most `width` characters, the break where the two lines
    are most even; None when they do not fit. One word alone may be longer than a line."""
    text = joiner.join(words)
    if len(text) <= width or len(words) == 1:
        return [text]
    best: tuple[int, list[str]] | None = None
    for i in range(1, len(words)):
        first, second = joiner.join(words[:i]), joiner.join(words[i:])
        if len(first) <= width and len(second) <= width:
            longest = max(len(first), len(second))
            if best is None or longest < best[0]:
                best = (longest, [first, second])
    return best[1] if best else None


def _segment_tokens(segment: Segment) -> tuple[list[_Token], str]:
    """The segment's words with their times, and how they join: the aligned words (a piece
    without a leading space, like `-disposed`, joins the word before it), else its text's words
    with the segment's span shared out by characters. Text without spaces (Chinese, Japanese,
    Thai) is cut between the model's words and joined with nothing."""
    text = segment.text.strip()
    words = segment.words
    joiner = " " if " " in text or not words else ""
    if words:
        tokens: list[_Token] = []
        for w in words:
            piece = w.word
            if not piece.strip():
                continue
            if tokens and joiner and not piece.startswith(" "):
                last = tokens[-1]
                tokens[-1] = _Token(last.text + piece.strip(), last.start, max(last.end, w.end))
            else:
                tokens.append(_Token(piece.strip(), w.start, w.end))
        return tokens, joiner
    parts = text.split()
    if not parts:
        return [], joiner
    start, end = segment.start, segment.end
    total = sum(len(p) + 1 for p in parts)
    tokens, used = [], 0
    for part in parts:
        t0 = start + (end - start) * used / total
        used += len(part) + 1
        tokens.append(_Token(part, t0, start + (end - start) * used / total))
    return tokens, joiner


def _split(tokens: list[_Token], joiner: str) -> list[list[_Token]]:
    """The fewest cues that fit the limits, as even as possible, preferring to end a cue at a
    clause or sentence end: dynamic programming over cut points, cost the squared length of each
    cue (even cues), less a bonus for ending on punctuation."""
    n = len(tokens)
    best: list[tuple[float, int]] = [(0.0, 0)] + [(float("inf"), 0)] * n  # (cost, cut) up to i
    longest = MAX_LINES * (MAX_LINE_CHARS + 1)
    for j in range(1, n + 1):
        chars = 0
        for i in range(j - 1, -1, -1):
            chars += len(tokens[i].text) + len(joiner)
            if chars > longest + len(joiner) and i < j - 1:
                break
            cue = tokens[i:j]
            if len(cue) > 1 and (
                cue[-1].end - cue[0].start > MAX_CUE_S or wrap([t.text for t in cue], joiner=joiner) is None
            ):
                continue
            bonus = 0.5 if j < n and cue[-1].text[-1:] in ",;:.!?。，！？" else 0.0
            cost = best[i][0] + 1.0 + (chars / longest) ** 2 - bonus * (chars / longest)
            if cost < best[j][0]:
                best[j] = (cost, i)
    cuts, j = [], n
    while j > 0:
        i = best[j][1]
        cuts.append(tokens[i:j])
        j = i
    return cuts[::-1]


def cues(segments: Iterable[Segment]) -> list[Cue]:
    """Each segment's words cut into cues; a cue never spans two segments."""
    out: list[Cue] = []
    for segment in segments:
        tokens, joiner = _segment_tokens(segment)
        if tokens:
            out += [_cue(group, joiner, segment.speaker) for group in _split(tokens, joiner)]
    # Cues shown one after the other: a cue ends no later than the next one starts.
    for i in range(len(out) - 1):
        if out[i].end > out[i + 1].start:
            out[i] = replace(out[i], end=max(out[i].start, out[i + 1].start))
    return out


def _cue(tokens: list[_Token], joiner: str, speaker: str | None) -> Cue:
    lines = wrap([t.text for t in tokens], joiner=joiner) or [joiner.join(t.text for t in tokens)]
    return Cue(tokens[0].start, max(tokens[-1].end, tokens[0].start), tuple(lines), joiner, speaker)


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


def to_srt(items: Sequence[Cue], *, speaker_prefix: bool = True) -> str:
    """SRT; with `speaker_prefix`, a cue whose speaker is not the cue before's starts `S2: `."""
    blocks = []
    previous: str | None = None
    for i, c in enumerate(items, 1):
        lines = [_safe(x) for x in c.lines]
        if speaker_prefix and c.speaker is not None and c.speaker != previous:
            lines[0] = f"{c.speaker}: {lines[0]}"
        previous = c.speaker
        blocks.append(f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n" + "\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def to_vtt(items: Sequence[Cue], *, speaker_prefix: bool = True) -> str:
    """WebVTT; a cue with a speaker is its voice's (`<v S1>`), which players can show or style."""
    del speaker_prefix  # WebVTT names the voice in markup, not in the text

    def escape(line: str) -> str:
        return _safe(line).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    blocks = []
    for c in items:
        voice = f"<v {c.speaker}>" if c.speaker is not None else ""
        text = "\n".join(escape(x) for x in c.lines)
        blocks.append(f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{voice}{text}")
    return "WEBVTT\n\n" + "\n\n".join(blocks) + ("\n" if blocks else "")


WRITERS = {"srt": to_srt, "vtt": to_vtt}


def render(
    segments: Iterable[Segment], formats: Sequence[str], *, speaker_prefix: bool = True
) -> dict[str, str]:
    """Each requested format's file text; nothing when the member has no speech."""
    items = cues(segments)
    if not items:
        return {}
    return {fmt: WRITERS[fmt](items, speaker_prefix=speaker_prefix) for fmt in formats}

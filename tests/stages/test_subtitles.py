"""Subtitles: broadcast limits, read back by maintained parsers (srt, webvtt-py)."""

from __future__ import annotations

import io

import pytest
import srt
import webvtt

from streaming_pipeline.stages.subtitles import MAX_CUE_S, MAX_LINE_CHARS, MAX_LINES, cues, render, wrap
from streaming_pipeline.transcript import Segment, Word

TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do "
    "for your country. Permission is hereby granted, free of charge, to any person obtaining a copy."
)


def worded(text: str, start: float, per_word: float) -> Segment:
    words = [
        Word(start + i * per_word, start + (i + 1) * per_word - 0.05, " " + w, 1.0)
        for i, w in enumerate(text.split())
    ]
    return Segment(words[0].start, words[-1].end, text, words=words)


def seconds(clock: str) -> float:
    hours, minutes, secs = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(secs)


def parse_both(segments: list[Segment]) -> tuple[list, list]:
    files = render(segments, ("srt", "vtt"))
    return list(srt.parse(files["srt"])), webvtt.from_buffer(io.StringIO(files["vtt"])).captions


def check_limits(parsed_srt: list, parsed_vtt: list, transcript: str) -> None:
    assert len(parsed_srt) == len(parsed_vtt) > 0
    previous_end = 0.0
    for sub, cap in zip(parsed_srt, parsed_vtt, strict=True):
        lines = sub.content.split("\n")
        assert len(lines) <= MAX_LINES and all(len(line) <= MAX_LINE_CHARS for line in lines), lines
        start, end = sub.start.total_seconds(), sub.end.total_seconds()
        assert 0 <= start <= end and end - start <= MAX_CUE_S + 1e-6
        assert start >= previous_end - 1e-6, "cues do not overlap"
        previous_end = end
        assert cap.text == sub.content
        assert seconds(cap.start) == pytest.approx(start, abs=0.001)
        assert seconds(cap.end) == pytest.approx(end, abs=0.001)
    assert " ".join(s.content.replace("\n", " ") for s in parsed_srt).split() == transcript.split()


def test_cues_cut_at_word_times() -> None:
    first, second = TEXT.split(". ", 1)
    segments = [worded(first + ".", 0.3, 0.35), worded(second, 12.0, 0.6)]
    parsed_srt, parsed_vtt = parse_both(segments)
    check_limits(parsed_srt, parsed_vtt, TEXT)
    words = [w for s in segments for w in s.words or ()]
    starts = {round(w.start, 3) for w in words}
    assert all(round(s.start.total_seconds(), 3) in starts for s in parsed_srt), "each cue starts on a word"
    assert parsed_srt[0].start.total_seconds() == pytest.approx(0.3)


def test_cues_without_words_share_the_segment_time_by_characters() -> None:
    segments = [Segment(1.0, 16.0, TEXT), Segment(20.0, 21.5, "Thank you.")]
    parsed_srt, parsed_vtt = parse_both(segments)
    check_limits(parsed_srt, parsed_vtt, TEXT + " Thank you.")
    assert parsed_srt[0].start.total_seconds() == 1.0
    assert parsed_srt[-1].start.total_seconds() == 20.0 and parsed_srt[-1].content == "Thank you."
    assert parsed_srt[-2].end.total_seconds() == pytest.approx(16.0)


def test_no_speech_no_file_and_hostile_text_stays_text() -> None:
    assert render([], ("srt", "vtt")) == {}
    files = render([Segment(0.0, 2.0, "a --> b <i>c</i> & d")], ("vtt",))
    caption = webvtt.from_buffer(io.StringIO(files["vtt"])).captions[0]
    assert "-->" not in files["vtt"].split("\n", 3)[3]
    assert "<i>" not in files["vtt"] and "&lt;i&gt;c&lt;/i&gt;" in files["vtt"]
    assert seconds(caption.start) == 0.0


def test_wrap_balances_two_lines_or_refuses() -> None:
    assert wrap(["short"]) == ["short"]
    lines = wrap("ask not what your country can do for you, ask what you can".split())
    assert lines is not None and len(lines) == 2 and max(map(len, lines)) <= MAX_LINE_CHARS
    assert abs(len(lines[0]) - len(lines[1])) <= 8
    assert wrap(("word " * 30).split()) is None
    assert wrap(["x" * 60]) == ["x" * 60], "one word longer than a line stands alone"
    assert len(cues([Segment(0.0, 1.0, "x" * 60 + " y")])) == 2


def test_word_pieces_join_and_unspaced_text_is_cut_between_words() -> None:
    pieces = [(" He", 0.0, 0.2), (" was", 0.2, 0.4), (" ill", 0.4, 0.6), ("-disposed.", 0.6, 1.2)]
    segment = Segment(0.0, 1.2, "He was ill-disposed.", words=[Word(a, b, w, 1.0) for w, a, b in pieces])
    (cue,) = cues([segment])
    assert cue.text == "He was ill-disposed." and (cue.start, cue.end) == (0.0, 1.2)
    chinese = (
        "富士康在印度工廠出現大規模感染目前工廠產料以下降超過百分之五十這是一個很長的句子需要分成幾個字幕"
    )
    zh = Segment(
        0.0, 6.0, chinese, words=[Word(i * 0.2, (i + 1) * 0.2, ch, 1.0) for i, ch in enumerate(chinese)]
    )
    parsed = list(srt.parse(render([zh], ("srt",))["srt"]))
    assert len(parsed) >= 2
    assert "".join(s.content.replace("\n", "") for s in parsed) == chinese, "no spaces put into Chinese"
    assert all(len(line) <= MAX_LINE_CHARS for s in parsed for line in s.content.split("\n"))

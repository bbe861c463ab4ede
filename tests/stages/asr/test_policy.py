"""The batched decoder's policy, without a model: guards, the choice among attempts, packing,
timestamp splitting, word timing and the way back to the member's timeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from streaming_pipeline.stages.asr.policy import (
    FALLBACK_MAX_WAIT_CALLS,
    LANGUAGE_MIN_S,
    Attempt,
    RowQueue,
    final_attempt,
    is_silent,
    main_language,
    make_attempt,
    needs_fallback,
    resumed_kept,
    row_language,
    speech_rows,
)
from streaming_pipeline.stages.asr.timing import (
    MAX_CHARS_PER_S,
    PAUSE_SPLIT_S,
    Span,
    SpeechTimeline,
    drop_unbacked_repeats,
    ended_at,
    finalize_segments,
    seek_point,
    speech_segments,
    split_at_pauses,
    split_by_timestamps,
    time_words,
    words_from_alignment,
)
from streaming_pipeline.transcript import Segment, Word

TS = 50364  # <|0.00|> in Whisper's multilingual vocabulary
EOT = 50257


def ts(seconds: float) -> int:
    return TS + round(seconds / 0.02)


def attempt(avg_logprob: float = -0.3, no_speech: float = 0.1, ratio: float = 1.2, t: float = 0.0) -> Attempt:
    return Attempt((1, 2), "text", avg_logprob, no_speech, ratio, t)


# -- guards ------------------------------------------------------------------------------------
def test_guards_follow_faster_whisper() -> None:
    assert not needs_fallback(attempt())
    assert needs_fallback(attempt(avg_logprob=-1.5))
    assert needs_fallback(attempt(ratio=3.0))
    assert not needs_fallback(attempt(avg_logprob=-1.5, no_speech=0.9)), "silence: no retry"
    assert is_silent(attempt(avg_logprob=-1.5, no_speech=0.9))
    assert not is_silent(attempt(avg_logprob=-0.5, no_speech=0.9)), "likely text overrides no-speech"
    assert make_attempt([1], -0.1, 0.0, "la " * 50, 0.0).compression_ratio > 2.4
    assert needs_fallback(make_attempt([1], -0.1, 0.0, "la " * 50, 0.0)), "a loop of one word"
    a = make_attempt([5, 6, 7], -0.4, 0.0, "abc", 0.2)
    assert a.avg_logprob == pytest.approx(-0.4 * 3 / 4) and a.temperature == 0.2


def test_final_attempt_waits_for_the_next_temperature_then_takes_the_best_readable() -> None:
    bad = [attempt(avg_logprob=-1.2), attempt(avg_logprob=-1.1, ratio=2.6, t=0.2), attempt(-1.4, t=0.4)]
    assert final_attempt(bad[:1], last_temperature=False) is None
    assert final_attempt([*bad[:1], attempt(t=0.2)], last_temperature=False).temperature == 0.2
    chosen = final_attempt(bad, last_temperature=True)
    assert chosen is bad[0], "the likeliest below the compression threshold, not the likeliest of all"
    unreadable = [attempt(-1.3, ratio=3.0), attempt(-1.1, ratio=2.9, t=0.2)]
    assert final_attempt(unreadable, last_temperature=True) is unreadable[1]


# -- packing -----------------------------------------------------------------------------------
@dataclass(eq=False)
class M:
    language: str | None = None


@dataclass(eq=False)
class R:
    member: M
    index: int
    duration: float
    waited: int = 0
    level: int = 0
    attempts: list = field(default_factory=list)


def test_pack_takes_the_oldest_row_and_the_nearest_in_length() -> None:
    q = RowQueue()
    known = [M("en") for _ in range(5)]
    for m, d in zip(known, (10.0, 29.0, 11.0, 2.0, 9.5), strict=True):
        q.add(R(m, 0, d))
    rows, level = q.pack(3)
    assert level == 0 and [r.duration for r in rows] == [10.0, 9.5, 11.0]
    assert [r.duration for r in q.fresh] == [29.0, 2.0]


def test_pack_keeps_a_later_window_out_until_its_language_is_known() -> None:
    q = RowQueue()
    m, other = M(), M()
    q.add(R(other, 0, 5.0))
    q.add(R(m, 1, 5.0))  # its first window is not in this call: its language is unknown
    q.add(R(m, 0, 30.0))
    rows, _ = q.pack(2)
    assert [(r.member, r.index) for r in rows] == [(other, 0), (m, 0)]
    q2 = RowQueue()
    q2.add(R(m, 0, 30.0))
    q2.add(R(m, 1, 5.0))
    rows, _ = q2.pack(2)
    assert len(rows) == 2, "with its first window in the same call, the later one may come"


def test_failed_rows_wait_for_company_but_not_for_ever() -> None:
    q = RowQueue()
    failed = R(M("en"), 0, 5.0)
    q.retry(failed, 1)
    for i in range(2 * FALLBACK_MAX_WAIT_CALLS + 2):
        q.add(R(M("en"), 0, 5.0 + i))
    for _ in range(FALLBACK_MAX_WAIT_CALLS):
        rows, level = q.pack(2)
        assert level == 0, "fresh rows go first while the failed one has company to wait for"
    rows, level = q.pack(2)
    assert rows == [failed] and level == 1
    q.retry(R(M("en"), 0, 1.0), 2)
    q.retry(R(M("en"), 0, 1.0), 2)
    rows, level = q.pack(2)
    assert level == 2 and len(rows) == 2, "failed rows that fill a call go at once"


def test_dropping_a_member_removes_all_its_rows() -> None:
    q = RowQueue()
    m = M("en")
    q.add(R(m, 0, 1.0))
    q.retry(R(m, 1, 1.0), 1)
    q.add(R(M("en"), 0, 1.0))
    q.drop({id(m)})
    assert len(q) == 1


# -- timestamps --------------------------------------------------------------------------------
def test_split_at_timestamp_pairs_as_the_sequential_path() -> None:
    tokens = [ts(0), 1, 2, ts(2.4), ts(2.4), 3, ts(5.0), ts(5.5), 4, 5, ts(7.0)]
    spans = split_by_timestamps(tokens, timestamp_begin=TS, eot=EOT, duration=8.0)
    assert [(s.start, s.end, s.tokens) for s in spans] == [
        (0.0, 2.4, (1, 2)),
        (2.4, 5.0, (3,)),
        (5.5, 7.0, (4, 5)),
    ]


def test_text_after_the_last_timestamp_is_kept_to_the_window_end() -> None:
    tokens = [ts(0), 1, ts(3.0), ts(3.0), 2, 3]
    spans = split_by_timestamps(tokens, timestamp_begin=TS, eot=EOT, duration=9.5)
    assert [(s.start, s.end, s.tokens) for s in spans] == [(0.0, 3.0, (1,)), (3.0, 9.5, (2, 3))]


def test_times_past_the_window_are_clamped_and_empty_spans_dropped() -> None:
    tokens = [ts(0.5), 1, ts(29.0), ts(29.0), ts(29.5), EOT]
    spans = split_by_timestamps(tokens, timestamp_begin=TS, eot=EOT, duration=4.0)
    assert [(s.start, s.end) for s in spans] == [(0.5, 4.0)]
    assert split_by_timestamps([ts(0), ts(1)], timestamp_begin=TS, eot=EOT, duration=4.0) == []
    no_stamps = split_by_timestamps([1, 2], timestamp_begin=TS, eot=EOT, duration=4.0)
    assert [(s.start, s.end) for s in no_stamps] == [(0.0, 4.0)]


def test_seek_point_is_where_the_sequential_path_would_decode_again() -> None:
    stopped_early = [ts(0), 1, 2, ts(4.0), ts(4.0), 3, ts(21.72), ts(21.72)]
    assert seek_point(stopped_early, timestamp_begin=TS) == (21.72, 7)
    unfinished = [ts(0), 1, ts(3.0), ts(3.0), 2, 3]
    assert seek_point(unfinished, timestamp_begin=TS) == (3.0, 3)
    assert seek_point([ts(0), 1, ts(3.0), ts(3.0), 2, ts(5.0)], timestamp_begin=TS) is None, "single ending"
    assert seek_point([ts(0), 1, 2, ts(5.0)], timestamp_begin=TS) is None, "no pair: the window is done"


def test_a_decode_that_ends_on_a_single_timestamp_says_where_it_ended() -> None:
    assert ended_at([ts(0), 1, 2, ts(4.0)], timestamp_begin=TS) == 4.0, "no more speech after 4 s"
    assert ended_at([ts(0), 1, ts(3.0), ts(3.0), 2, ts(5.0)], timestamp_begin=TS) == 5.0
    assert ended_at([ts(0), 1, ts(3.0), ts(3.0)], timestamp_begin=TS) is None, "a pair: seek_point's case"
    assert ended_at([ts(0), 1, 2], timestamp_begin=TS) is None, "ran out mid-sentence"


def test_the_rest_after_an_early_end_is_kept_only_in_another_language_and_at_the_first_try() -> None:
    assert resumed_kept(attempt(), "en", "pt"), "a Portuguese sentence, then English: decoded"
    assert not resumed_kept(attempt(), "pt", "pt"), "the same language: the model's end stands"
    assert not resumed_kept(attempt(avg_logprob=-1.2), "ko", "en"), "over music: unlikely text is no speech"
    assert not resumed_kept(attempt(ratio=3.0), "fr", "en"), "a loop is no speech"


# -- words -------------------------------------------------------------------------------------
def test_words_start_where_the_alignment_path_reaches_them() -> None:
    # three text tokens + eot; words: " ask" (1 token), " not" (2 tokens); the path stays on a
    # token for several encoder frames (50 per second).
    words = [" ask", " not", "<eot>"]
    word_tokens = [[10], [11, 12], [EOT]]
    path = [(0, 0), (0, 1), (1, 25), (1, 26), (2, 40), (3, 60)]
    out = words_from_alignment(words, word_tokens, path, [0.9, 0.8, 0.6, 1.0])
    assert [(w["word"], w["start"], w["end"]) for w in out] == [(" ask", 0.0, 0.5), (" not", 0.5, 1.2)]
    assert out[1]["probability"] == pytest.approx(0.7)
    assert words_from_alignment(["<eot>"], [[EOT]], [(0, 0)], [1.0]) == []


def test_punctuation_joins_its_word() -> None:
    def word(text: str, token: int, start: float) -> dict:
        return {"word": text, "tokens": [token], "start": start, "end": start + 0.1, "probability": 1.0}

    alignment = [word(" «", 1, 0.0), word(" hello", 2, 0.1), word(",", 3, 0.5), word(" (world", 4, 0.6)]
    alignment += [word(" (", 5, 1.0), word(" again", 6, 1.1)]
    ((_, words),) = time_words([Span(0.0, 1.2, (1, 2, 3, 4, 5, 6))], alignment)
    assert [w.word for w in words] == [" «", " hello,", " (world", " ( again"], "« is not in the list"


def test_words_are_shared_out_to_their_spans_by_tokens() -> None:
    spans = [Span(0.0, 2.0, (1, 2)), Span(2.0, 4.0, (3,))]
    alignment = [
        {"word": " one", "tokens": [1], "start": 0.1, "end": 0.6, "probability": 0.9},
        {"word": " two", "tokens": [2], "start": 0.6, "end": 1.1, "probability": 0.9},
        {"word": " three", "tokens": [3], "start": 2.2, "end": 2.7, "probability": 0.9},
    ]
    timed = time_words(spans, alignment)
    assert [[w.word for w in words] for _, words in timed] == [[" one", " two"], [" three"]]
    assert [(s.start, s.end) for s, _ in timed] == [(0.1, 1.1), (2.2, 2.7)], "spans follow their words"


# -- the member's timeline ------------------------------------------------------------------------
def test_times_return_across_removed_silences() -> None:
    # speech 1-3 s and 10-12 s of the member: 4 s of speech timeline
    timeline = SpeechTimeline([{"start": 16000, "end": 48000}, {"start": 160000, "end": 192000}])
    seg = Segment(0.5, 3.5, "x")
    timeline.restore(seg)
    assert (seg.start, seg.end) == (1.5, 11.5)
    boundary = Segment(2.0, 2.0, "x")
    timeline.restore(boundary)
    assert (boundary.start, boundary.end) == (10.0, 3.0), "a start on the seam is the next region's"
    words = Segment(0, 0, "x", words=[Word(1.8, 1.9, " a", 1.0), Word(1.95, 2.15, " b", 1.0)])
    timeline.restore(words)
    assert [(w.start, w.end) for w in words.words] == [
        pytest.approx((2.8, 2.9)),
        pytest.approx((9.95, 10.15)),
    ], "a word keeps the region of its midpoint"
    assert (words.start, words.end) == (words.words[0].start, words.words[-1].end)
    assert SpeechTimeline([]).original(3.0) == 3.0


def test_finalized_segments_are_ordered_disjoint_and_inside_the_member() -> None:
    segs = [
        Segment(4.0, 9.0, "late", words=[Word(3.5, 4.5, " late", 1.0), Word(8.0, 12.0, " end", 1.0)]),
        Segment(-0.2, 4.5, "first"),
        Segment(5.0, 6.0, ""),
    ]
    out = finalize_segments(segs, duration=8.25)
    assert [s.text for s in out] == ["first", "late"]
    assert (out[0].start, out[0].end) == (0.0, 4.5)
    assert (out[1].start, out[1].end) == (4.5, 8.25)
    assert [(w.start, w.end) for w in out[1].words] == [(4.5, 4.5), (8.0, 8.25)]
    for seg in out:
        assert 0 <= seg.start <= seg.end <= 8.25
    assert out[1].as_json()["words"][0] == {"start": 4.5, "end": 4.5, "word": " late", "probability": 1.0}
    assert "words" not in out[0].as_json()


# -- rows of contiguous speech and their languages -------------------------------------------------
def test_speech_rows_join_only_short_gaps_and_keep_them_in_the_row() -> None:
    regions = [{"start": 0, "end": 10}, {"start": 14, "end": 20}, {"start": 40, "end": 50}]
    # gap 4 <= 5: one contiguous row (the pause kept in it); gap 20 > 5: a row of its own
    assert speech_rows(regions, 100, 5) == [{"start": 0, "end": 20}, {"start": 40, "end": 50}]
    # a row never grows past the window, and a region longer than it is cut to fit
    assert speech_rows(regions, 15, 5) == [
        {"start": 0, "end": 10},
        {"start": 14, "end": 20},
        {"start": 40, "end": 50},
    ]
    assert speech_rows([{"start": 0, "end": 35}], 15, 5) == [
        {"start": 0, "end": 15}, {"start": 15, "end": 30}, {"start": 30, "end": 35},
    ]  # fmt: skip
    assert speech_rows([], 15, 5) == []


def test_a_segment_never_spans_the_gap_between_two_rows() -> None:
    """Rows end where the speech of a stretch ends: the way back to the member's timeline puts a
    row's last segment (ending at the row's end) before the gap, and the next row's after it."""
    rows = speech_rows([{"start": 16000, "end": 48000}, {"start": 160000, "end": 192000}], 480000, 16000)
    timeline = SpeechTimeline(rows)
    first = Segment(0.0, 2.0, "ends with its row")  # speech seconds 0-2: the first row, whole
    second = Segment(2.0, 3.5, "the next stretch")
    timeline.restore(first)
    timeline.restore(second)
    assert (first.start, first.end) == (1.0, 3.0)
    assert (second.start, second.end) == (10.0, 11.5)


def test_a_row_keeps_its_own_language_only_when_the_detection_is_sure_of_it() -> None:
    anchor = ("en", 0.97)
    assert row_language(("de", 0.93), 2.0, anchor) == ("de", 0.93)  # sure: a short German sentence
    assert row_language(("ko", 0.6), LANGUAGE_MIN_S, anchor) == ("ko", 0.6)  # likely, long enough
    assert row_language(("ko", 0.6), LANGUAGE_MIN_S - 0.5, anchor) == anchor  # likely but short
    assert row_language(("nn", 0.3), 20.0, anchor) == anchor  # unsure however long
    assert row_language(("en", 0.3), 1.0, anchor) == ("en", 0.3)  # agrees with its member
    assert row_language(("ja", 0.2), 1.0, None) == ("ja", 0.2)  # the first row keeps its own


def test_the_members_language_is_the_one_with_the_most_speech() -> None:
    spoken = [("en", 10.0, 0.9), ("de", 4.0, 0.8), ("en", 5.0, 0.6), ("de", 12.0, 0.95), (None, 50.0, 0.0)]
    language, probability = main_language(spoken)
    assert language == "de" and probability == pytest.approx((4 * 0.8 + 12 * 0.95) / 16)
    assert main_language([]) == (None, 0.0)


# -- segments that follow the speech ---------------------------------------------------------------
def _worded(*words: tuple[float, float, str]) -> Segment:
    timed = [Word(a, b, w, 0.9) for a, b, w in words]
    return Segment(0.0, 30.0, "".join(w for _, _, w in words).strip(), -0.2, 0.1, 0.0, 1.2, timed, "en")


def test_a_segment_is_split_where_its_words_pause_and_each_part_spans_its_words() -> None:
    seg = _worded((1.0, 1.4, " We"), (1.5, 2.0, " expect"), (2.0 + PAUSE_SPLIT_S + 0.01, 5.0, " turbulence."))
    first, second = split_at_pauses(seg)
    assert (first.start, first.end, first.text) == (1.0, 2.0, "We expect")
    assert (second.start, second.end, second.text) == (2.0 + PAUSE_SPLIT_S + 0.01, 5.0, "turbulence.")
    assert first.language == second.language == "en" and first.avg_logprob == seg.avg_logprob
    # a pause of exactly the limit does not split, and a segment without words is kept whole
    close = _worded((1.0, 2.0, " one"), (2.0 + PAUSE_SPLIT_S, 4.0, " two"))
    assert split_at_pauses(close) == [close]
    bare = Segment(0.0, 30.0, "no words")
    assert split_at_pauses(bare) == [bare]


def test_segment_mode_keeps_the_word_times_but_not_the_words() -> None:
    """The window said 0-30 s; its words say 3.0-4.1 and 9.0-9.6: that is where the text goes."""

    def member() -> list[Segment]:
        return [_worded((3.0, 3.5, " Good"), (3.6, 4.1, " evening."), (9.0, 9.6, " Hello."))]

    segment_mode = speech_segments(member(), 30.0, keep_words=False)
    assert [(s.start, s.end, s.text, s.words) for s in segment_mode] == [
        (3.0, 4.1, "Good evening.", None),
        (9.0, 9.6, "Hello.", None),
    ]
    word_mode = speech_segments(member(), 30.0, keep_words=True)
    assert [(s.start, s.end) for s in word_mode] == [(3.0, 4.1), (9.0, 9.6)]
    assert [w.word for w in word_mode[0].words or []] == [" Good", " evening."]


def test_a_line_repeated_faster_than_speech_is_dropped_and_a_sentence_never_comes_three_times() -> None:
    """prog1's restaurant noise: "I'm going to put it up for you." twice in 1.5 s (22 letters in
    0.58 s and 0.74 s): Whisper's loop, not speech. A line said once, or again at a speaking
    pace, stays; a sentence's third copy in a row goes whatever its pace."""
    line = "I'm going to put it up for you."
    loop = [Segment(48.0, 48.58, line), Segment(48.7, 49.44, line)]
    assert drop_unbacked_repeats(loop) == []
    alone = [Segment(48.0, 48.58, line)]
    assert drop_unbacked_repeats(alone) == alone  # once: never the rule's business
    paced = [Segment(1.0, 3.0, line), Segment(3.5, 5.5, " i'm going to put it up, for you")]
    assert drop_unbacked_repeats(paced) == paced  # again at a speaking pace, however written
    apart = [Segment(1.0, 1.5, line), Segment(20.0, 20.5, line)]
    assert drop_unbacked_repeats(apart) == apart  # far apart: not a run
    thrice = [Segment(t, t + 2.0, line) for t in (0.0, 2.5, 5.0)]
    assert drop_unbacked_repeats(thrice) == thrice[:1]
    no = [Segment(t, t + 0.4, "No.") for t in (0.0, 0.6, 1.2)]
    assert drop_unbacked_repeats(no) == no  # a short answer may come three times
    # the limit itself: 22 letters at exactly MAX_CHARS_PER_S are kept
    edge = 22 / MAX_CHARS_PER_S
    assert (
        len(drop_unbacked_repeats([Segment(0.0, edge, line), Segment(edge + 0.1, 2 * edge + 0.1, line)])) == 2
    )
    # speech_segments applies it: the decoders' segments never hold the loop
    assert speech_segments([*loop, Segment(50.0, 52.0, "Hello there.")], 60.0, keep_words=False)[0].text == (
        "Hello there."
    )

"""Who spoke when, as numbers: speech regions from a transcript, windows, clustering, turns, a
transcript's speakers and the RTTM. No model, no database."""

from __future__ import annotations

import numpy as np

from streaming_pipeline.stages.speakers import policy
from streaming_pipeline.stages.speakers.policy import Window
from streaming_pipeline.transcript import Segment, Turn, Word


def _voices(counts: list[int], seed: int = 0, spread: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of `len(counts)` voices: a random direction each, windows scattered around it."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), 192))
    emb = np.concatenate([c + spread * np.linalg.norm(c) / np.sqrt(192) * rng.normal(size=(n, 192)) * 4
                          for c, n in zip(centres, counts, strict=True)])  # fmt: skip
    truth = np.repeat(np.arange(len(counts)), counts)
    return emb, truth


def _same_grouping(labels: np.ndarray, truth: np.ndarray) -> bool:
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth, strict=True)}
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


def test_speech_regions_follow_the_words_and_join_near_ones() -> None:
    words = [Word(1.0, 1.4, " a", 0.9), Word(1.5, 2.0, " b", 0.9), Word(4.0, 4.5, " c", 0.9)]
    segments = [Segment(0.5, 5.0, "a b c", words=words), Segment(8.0, 9.0, "untimed")]
    regions = policy.speech_regions(segments, duration=10.0)
    assert [(round(a, 2), round(b, 2)) for a, b in regions] == [(0.8, 2.2), (3.8, 4.7), (8.0, 9.0)]
    assert policy.speech_regions([], 10.0) == []


def test_windows_cover_each_region_and_a_short_one_is_one_window() -> None:
    wins = policy.windows([(0.0, 4.0), (10.0, 11.0), (20.0, 20.2)])
    long = [w for w in wins if w.end <= 4.0]
    assert [w.start for w in long] == [0.0, 0.75, 1.5, 2.25, 2.5]  # the last one ends at the region's end
    assert all(w.end - w.start == policy.WINDOW_S for w in long)
    assert Window(10.0, 11.0) in wins
    assert not any(w.start >= 20.0 for w in wins), "shorter than MIN_WINDOW_S: no window"


def test_clustering_finds_the_voices_and_their_count() -> None:
    for counts in ([40], [30, 25], [20, 15, 30], [12, 25, 18, 20]):
        emb, truth = _voices(counts, seed=len(counts))
        labels = policy.cluster(emb)
        assert _same_grouping(labels, truth), (counts, labels)
    assert len(policy.cluster(np.zeros((0, 192)))) == 0
    assert set(policy.cluster(_voices([1])[0]).tolist()) == {0}


def test_a_known_count_and_the_maximum_are_kept() -> None:
    emb, _ = _voices([20, 20, 20], seed=7)
    assert len(set(policy.cluster(emb, num_speakers=2).tolist())) == 2
    assert len(set(policy.cluster(emb, max_speakers=2).tolist())) <= 2
    assert len(set(policy.cluster(emb, num_speakers=1).tolist())) == 1


def test_a_fragment_too_short_to_be_a_speaker_joins_its_nearest_voice() -> None:
    emb, _ = _voices([30, 30, 2], seed=3)  # 2 windows: 1.5 s, below MIN_SPEAKER_S
    labels = policy.cluster(emb)
    assert len(set(labels.tolist())) == 2


def test_a_long_member_is_clustered_through_micro_clusters() -> None:
    emb, truth = _voices([500, 400, 300], seed=5)
    assert len(emb) > policy.MAX_DIRECT
    assert _same_grouping(policy.cluster(emb), truth)


def test_turns_are_named_in_order_of_appearance() -> None:
    regions = [(0.0, 3.0), (3.5, 6.5)]
    wins = policy.windows(regions)
    labels = [7 if w.centre < 3.2 else 2 for w in wins]
    turns = policy.turns(regions, wins, labels)
    assert [(t.speaker, t.start, t.end) for t in turns] == [("S1", 0.0, 3.0), ("S2", 3.5, 6.5)]
    assert policy.turns(regions, [], []) == []


def test_a_segment_that_spans_a_speaker_change_is_split_there() -> None:
    words = [Word(0.0, 0.5, " Good", 0.9), Word(0.5, 1.0, " morning.", 0.9),
             Word(1.2, 1.6, " Hello", 0.9), Word(1.6, 2.0, " there.", 0.9)]  # fmt: skip
    seg = Segment(0.0, 2.0, "Good morning. Hello there.", words=words, language="en")
    turns = [Turn(0.0, 1.1, "S1"), Turn(1.1, 2.0, "S2")]
    out = policy.attribute([seg, Segment(3.0, 4.0, "untimed")], turns)
    assert [(s.speaker, s.start, s.end, s.text) for s in out] == [
        ("S1", 0.0, 1.0, "Good morning."),
        ("S2", 1.2, 2.0, "Hello there."),
        ("S2", 3.0, 4.0, "untimed"),  # no overlap: the nearest turn's
    ]
    assert [w.speaker for s in out[:2] for w in s.words or []] == ["S1", "S1", "S2", "S2"]
    assert out[0].language == out[1].language == "en"
    assert policy.attribute([seg], []) == [seg], "no speech found: nothing invented"


def test_summaries_say_how_long_each_speaks_and_where_its_voice_is() -> None:
    regions = [(0.0, 3.0), (3.5, 6.5)]
    wins = policy.windows(regions)
    emb, _ = _voices([len(wins) // 2, len(wins) - len(wins) // 2])
    labels = [0] * (len(wins) // 2) + [1] * (len(wins) - len(wins) // 2)
    turns = policy.turns(regions, wins, labels)
    speakers = policy.summaries(turns, wins, labels, emb)
    assert [s.id for s in speakers] == ["S1", "S2"]
    assert sum(s.seconds for s in speakers) == sum(t.end - t.start for t in turns)
    assert speakers[0].first_s == 0.0
    assert all(abs(np.linalg.norm(s.centroid) - 1.0) < 1e-6 and len(s.centroid) == 192 for s in speakers)


def test_the_rttm_is_standard_and_a_blank_in_a_name_cannot_shift_its_fields() -> None:
    text = policy.rttm("studio a/talk", [Turn(0.5, 2.25, "S1"), Turn(2.5, 3.0, "S2")])
    assert text.splitlines() == [
        "SPEAKER studio_a/talk 1 0.500 1.750 <NA> <NA> S1 <NA> <NA>",
        "SPEAKER studio_a/talk 1 2.500 0.500 <NA> <NA> S2 <NA> <NA>",
    ]
    assert all(len(line.split()) == 10 for line in text.splitlines())


def test_the_same_voice_across_members_is_one_voice_and_two_voices_never_share_one() -> None:
    emb, truth = _voices([5, 3, 4], seed=11, spread=0.07)  # three persons; centroids: tighter than windows
    order = np.random.default_rng(0).permutation(len(emb))
    names = policy.voices(emb[order])
    assert _same_grouping(np.array([int(n[1:]) for n in names]), truth[order])
    assert names[0] == "V1" and set(names) == {"V1", "V2", "V3"}
    assert policy.voices(np.zeros((0, 192))) == [] and policy.voices(emb[:1]) == ["V1"]


def test_a_day_of_many_member_speakers_is_reduced_first() -> None:
    emb, truth = _voices([1500, 700, 900], seed=13, spread=0.07)
    assert len(emb) > policy.MAX_VOICES_DIRECT
    names = policy.voices(emb)
    assert _same_grouping(np.array([int(n[1:]) for n in names]), truth)


def test_a_segment_that_says_nothing_is_no_ones_speech() -> None:
    """Whisper writes "." over instrumental music: no region, no speaker."""
    dots = Segment(0.0, 4.0, "...", words=[Word(0.0, 4.0, "...", 0.1)])
    assert policy.speech_regions([dots], 10.0) == []
    (out,) = policy.attribute([dots], [Turn(0.0, 4.0, "S1")])
    assert out.speaker is None and not policy.spoken(" . ,") and policy.spoken("3")

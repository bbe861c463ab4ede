"""The speaker-turn set's scoring helpers: a hypothesis speaker's person, pairwise precision and
recall of the voices (the DER itself is the set's own scorer's)."""

from __future__ import annotations

from streaming_pipeline.tools.speakers_score import SPAN_LIMIT_S, pairwise, reference_of, spanning


def test_each_hypothesis_speaker_is_the_person_it_shares_most_time_with() -> None:
    hyp = [("S1", 0.0, 5.0), ("S2", 5.0, 9.0), ("S1", 9.0, 10.0)]
    ref = [("LJ", 0.0, 4.0), ("JFK", 4.0, 10.0)]
    assert reference_of(hyp, ref) == {"S1": "LJ", "S2": "JFK"}


def test_pairwise_precision_and_recall() -> None:
    assert pairwise(["V1", "V1", "V2"], ["a", "a", "b"]) == (1.0, 1.0, 1, 1)
    precision, recall, same_voice, same_truth = pairwise(["V1", "V1", "V1"], ["a", "a", "b"])
    assert (same_voice, same_truth) == (3, 1) and precision == 1 / 3 and recall == 1.0
    precision, recall, _, _ = pairwise(["V1", "V2", "V3"], ["a", "a", "a"])
    assert precision == 1.0 and recall == 0.0


def test_a_segment_spans_two_speakers_only_past_half_a_second_of_the_second() -> None:
    ref = [("LJ", 0.0, 4.0), ("JFK", 4.0, 10.0), ("LJ", 10.0, 12.0)]
    assert spanning([(0.0, 4.4), (4.0, 9.0)], ref) == 0  # 0.4 s of JFK: within the limit
    assert spanning([(0.0, 4.0 + SPAN_LIMIT_S + 0.1)], ref) == 1
    assert spanning([(3.0, 11.0)], ref) == 1  # LJ on both sides: still two people
    assert spanning([(20.0, 25.0)], ref) == 0  # over no one

"""A member's own values never fail another member's write: text made safe where the decoder
makes it, and what the database still refuses failing that member alone (a real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from streaming_pipeline.errors import LeaseLost
from streaming_pipeline.stages.asr.policy import (
    Attempt,
)
from streaming_pipeline.stages.asr.timing import (
    Span,
    SpeechTimeline,
    finalize_segments,
    row_segments,
    time_words,
)
from streaming_pipeline.stages.subtitles import render
from streaming_pipeline.state.records import MemberRecord, Owner
from streaming_pipeline.state.states import MemberStatus
from streaming_pipeline.state.store import ArchiveKey, ProgressStore
from streaming_pipeline.transcript import Transcript, clean_text

from ..conftest import query

KEY = ArchiveKey("2025-01-25/06_00.tar.xz", dt.date(2025, 1, 25), "06_00")
# What a model's byte-level BPE or a broken decode can hand over, with what must stay as it is.
NUL, ESC, SURROGATE, REPLACED = "\x00", "\x1b", "\udc80", "\ufffd"


@pytest.fixture
def store(pg_dsn: str) -> ProgressStore:
    store = ProgressStore(pg_dsn)
    store.init_schema()
    store.archives.start(KEY, path="/x.tar.xz", bytes_total=10, owner=Owner(None, "h", 1))
    return store


def _decoded(member: str) -> Transcript:
    """A window's output through the batched decoder's own policy, as `RowCall.infer` and `_complete`
    call it: spans and their texts, the aligned words, the speech timeline, the final repairs."""
    spans = [Span(0.0, 1.5, (1, 2, 3)), Span(1.5, 3.0, (4, 5))]
    texts = [clean_text(f" Hello{NUL} there{ESC}"), clean_text(f"wor{SURROGATE}ld {REPLACED}")]
    alignment = [
        {"word": f" Hello{NUL}", "tokens": [1], "start": 0.1, "end": 0.6, "probability": 0.9},
        {"word": f" there{ESC}", "tokens": [2, 3], "start": 0.7, "end": 1.4, "probability": 0.8},
        {"word": f" wor{SURROGATE}ld", "tokens": [4], "start": 1.6, "end": 2.2, "probability": 0.7},
        {"word": f" {REPLACED}", "tokens": [5], "start": 2.3, "end": 2.9, "probability": 0.6},
    ]
    timed = time_words(spans, alignment)
    attempt = Attempt((1, 2, 3, 4, 5), "", -0.2, 0.01, 1.2, 0.0)
    segments = row_segments([s for s, _ in timed], texts, attempt, offset=0.0, words=[w for _, w in timed])
    timeline = SpeechTimeline([{"start": 8000, "end": 64000}])
    for segment in segments:
        timeline.restore(segment)
    return Transcript.of(
        finalize_segments(segments, 4.0), archive=KEY.archive, member=member, model="m",
        language="en", language_probability=1.0, duration=4.0,
    )  # fmt: skip


def _record(t: Transcript) -> MemberRecord:
    return MemberRecord.transcribed(t.member, t, remote_path=f"/r/{t.member}.flac")


def test_unsafe_decoded_text_is_made_safe_for_json_subtitles_and_postgresql(
    store: ProgressStore, pg_dsn: str
) -> None:
    t = _decoded("a.wav")
    assert [s.text for s in t.segments] == ["Hello there", f"wor{REPLACED}ld {REPLACED}"]
    assert [w.word for s in t.segments for w in s.words or ()] == [
        " Hello",
        " there",
        f" wor{REPLACED}ld",
        f" {REPLACED}",
    ]
    json.dumps(t.as_json(), ensure_ascii=False).encode("utf-8")
    srt = render(t.segments, ["srt"])["srt"]
    assert NUL not in srt and ESC not in srt and "Hello there" in srt

    assert store.members.record(KEY, [_record(t)]) == []
    (row,) = query(pg_dsn, "SELECT status, transcript FROM audio_files")
    assert row == {"status": "uploading", "transcript": t.text}
    segments = query(pg_dsn, "SELECT text, words FROM segments ORDER BY seq")
    assert [s["text"] for s in segments] == ["Hello there", f"wor{REPLACED}ld {REPLACED}"]
    assert [w[2] for w in segments[0]["words"]] == [" Hello", " there"]


@pytest.mark.parametrize("poison", [NUL, SURROGATE], ids=["nul", "lone-surrogate"])
def test_values_the_database_refuses_fail_their_member_alone(
    store: ProgressStore, pg_dsn: str, poison: str
) -> None:
    good = [_decoded(f"good{i}.wav") for i in range(3)]
    bad = _decoded("bad.wav")
    # Past the sanitiser on purpose (a mutable Segment changed after it was made): the database
    # must still fail only this member.
    assert bad.segments[0].words is not None
    bad.segments[0].words[0].word = f" Hel{poison}lo"
    records = [_record(good[0]), _record(bad), _record(good[1]), _record(good[2])]

    (failed,) = store.members.record(KEY, records)

    assert failed.member == "bad.wav" and failed.status == MemberStatus.FAILED
    rows = {r["member"]: r for r in query(pg_dsn, "SELECT member, status, error FROM audio_files")}
    assert {m: r["status"] for m, r in rows.items()} == {
        "good0.wav": "uploading", "good1.wav": "uploading", "good2.wav": "uploading", "bad.wav": "failed",
    }  # fmt: skip
    assert rows["bad.wav"]["error"].startswith("its transcript could not be recorded: database error")
    assert poison not in rows["bad.wav"]["error"]
    searchable = query(pg_dsn, "SELECT DISTINCT member FROM segments ORDER BY member")
    assert [r["member"] for r in searchable] == ["good0.wav", "good1.wav", "good2.wav"]


def test_a_lost_lease_still_stops_the_write(store: ProgressStore, pg_dsn: str) -> None:
    """Only the values' refusal is isolated: a write the fence refuses writes nothing."""
    store.hold(KEY.archive, token=999)
    with pytest.raises(LeaseLost):
        store.members.record(KEY, [_record(_decoded("a.wav"))])
    assert query(pg_dsn, "SELECT count(*) AS n FROM audio_files")[0]["n"] == 0

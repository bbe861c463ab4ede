"""The transcript type: the JSON sidecar layout it writes, and reading it back."""

from __future__ import annotations

import json
from dataclasses import replace

from streaming_pipeline.transcript import Segment, SourceAudio, Transcript, Word, clean_text, safe_text


def _transcript() -> Transcript:
    segments = [
        Segment(
            0.5,
            2.0,
            "Ask not",
            -0.2,
            0.01,
            0.0,
            1.1,
            [Word(0.5, 1.0, " Ask", 0.912345), Word(1.0, 2.0, " not", 0.8)],
        ),
        Segment(2.5, 4.0, "what your country", -0.4, 0.02, 0.4, 1.3, [Word(2.5, 4.0, " what", 0.7)]),
    ]
    return Transcript.of(
        segments, archive="a.tar.xz", member="x/jfk.wav", model="whisper-base",
        language="en", language_probability=0.98, duration=4.2,
    )  # fmt: skip


def test_text_is_the_segments_joined_and_fallback_is_any_temperature_above_zero() -> None:
    t = _transcript()
    assert t.text == "Ask not what your country"
    assert t.fallback
    assert not Transcript.of(
        t.segments[:1],
        archive="a",
        member="m",
        model="m",
        language="en",
        language_probability=1.0,
        duration=1.0,
    ).fallback


def test_json_layout_and_round_trip() -> None:
    t = _transcript()
    sourced = replace(t, source=SourceAudio(44100, 2, 4.25, "soundfile"))
    data = json.loads(json.dumps(sourced.as_json()))
    assert list(data) == [
        "text", "language", "language_probability", "duration", "segments", "model", "archive", "member",
        "source_sample_rate", "source_channels", "source_duration", "source_reader",
    ]  # fmt: skip
    assert data["segments"][0]["words"][0] == {
        "start": 0.5,
        "end": 1.0,
        "word": " Ask",
        "probability": 0.9123,
    }
    back = Transcript.from_json(data)
    assert back.source == sourced.source and back.text == t.text and back.model == "whisper-base"
    assert [s.as_json() for s in back.segments] == data["segments"]
    assert "source_sample_rate" not in t.as_json()


def test_segments_without_word_times_have_no_words_key() -> None:
    data = Transcript.of(
        [Segment(0.0, 1.0, "hello")], archive="a", member="m", model="m",
        language=None, language_probability=0.0, duration=1.0,
    ).as_json()  # fmt: skip
    assert "words" not in data["segments"][0]
    assert Transcript.from_json(data).segments[0].words is None


def test_every_signature_that_carries_a_transcript_names_its_type() -> None:
    """Decoders, the transcriber, the worker's staging, subtitles and the Parquet rows pass a
    `Transcript` or its `Segment`s, never a dict that each side indexes by convention."""
    import typing
    from collections import abc
    from concurrent.futures import Future

    from streaming_pipeline.hf import shards
    from streaming_pipeline.run import archive_work, dataset, engine
    from streaming_pipeline.stages import subtitles
    from streaming_pipeline.stages.asr import batched, loader, per_member, protocol

    def hints(fn: typing.Any) -> dict[str, typing.Any]:
        return typing.get_type_hints(fn)

    for submit in (
        protocol.Decoder.submit,
        batched.BatchedDecoder.submit,
        per_member.PerMemberDecoder.submit,
    ):
        assert hints(submit)["return"] == Future[Transcript]
    for transcribe_fn in (protocol.TranscriberLike.transcribe, loader.Transcriber.transcribe):
        assert hints(transcribe_fn)["return"] is Transcript
    assert hints(archive_work.ArchiveWork._stage)["result"] is Transcript
    assert hints(dataset._Row)["given"] == Transcript | None
    assert Transcript in typing.get_args(engine.Outcome)
    assert hints(subtitles.render)["segments"] == abc.Iterable[Segment]
    assert hints(shards.segment_rows)["segments"] == abc.Sequence[Segment]


# -- text every output can hold ------------------------------------------------------------------
UNSAFE = "a\x00b\x1bc\x7fd\x85e\ud800f\udfffg"


def test_safe_text_removes_control_characters_and_replaces_lone_surrogates() -> None:
    assert safe_text(UNSAFE) == "abcde\ufffdf\ufffdg"
    assert safe_text("tab\tand\nnewline stay") == "tab\tand\nnewline stay"
    assert safe_text("already \ufffd replaced") == "already \ufffd replaced"
    assert safe_text("\r\x0b\x0c") == ""
    assert clean_text("  \x00 Hello \x00 ") == "Hello"
    clean = "Grüße, 广州市, ¿qué? — «ok» 🎙"
    assert safe_text(clean) is clean  # nothing else changes, not even the object


def test_words_segments_and_transcripts_are_safe_however_they_are_made() -> None:
    word = Word(0.0, 1.0, f" {UNSAFE}", 0.5)
    segment = Segment(0.0, 1.0, UNSAFE, words=[word])
    assert word.word == " abcde\ufffdf\ufffdg"
    assert segment.text == "abcde\ufffdf\ufffdg"
    made = Transcript(archive="a", member="m", model="m", language="en", language_probability=1.0,
                      duration=1.0, segments=(segment,), text=UNSAFE)  # fmt: skip
    assert made.text == "abcde\ufffdf\ufffdg"
    back = Transcript.from_json(json.loads(json.dumps({**made.as_json(), "text": UNSAFE})))
    assert back.text == made.text and back.segments[0].words[0].word == word.word
    json.dumps(made.as_json(), ensure_ascii=False).encode("utf-8")  # no surrogate left to fail it

"""Searching a processed day (`search`), and making an older day searchable from its JSON files on
the destination (`index`). The tiny random model's words mean nothing: its tests search for a word
the transcripts hold. The `realmodel` test searches real speech transcribed by whisper-base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streaming_pipeline.cli import main

from ..conftest import DAY, local_day_options, make_day, query, worker_options


def _options(tmp_path: Path, dsn: str, model: Path, *extra: str) -> list[str]:
    return [
        *worker_options(tmp_path, dsn, model),
        "--temperatures",
        "0",
        *local_day_options(tmp_path),
        *extra,
    ]


def _searchable(dsn: str) -> list[tuple[str, int | None]]:
    return [
        (r["member"], r["searchable_segments"])
        for r in query(dsn, "SELECT member, searchable_segments FROM audio_files ORDER BY archive, member")
    ]


@pytest.mark.slow
def test_a_day_is_searchable_as_it_is_recorded_and_index_fills_an_older_one(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys
) -> None:
    make_day(tmp_path, ["06_00", "06_30"], members=2)
    assert main(["process-day", DAY, *_options(tmp_path, pg_dsn, tiny_model)]) == 0
    capsys.readouterr()
    recorded = _searchable(pg_dsn)
    segments = query(pg_dsn, "SELECT archive, member, seq, text, start_s, end_s FROM segments")
    assert sum(n or 0 for _, n in recorded) == len(segments) > 0
    # the segments are the JSON's, in order, with their times
    for sidecar in (tmp_path / "remote").rglob("*.json"):
        data = json.loads(sidecar.read_text())
        own = [s for s in segments if (s["archive"], s["member"]) == (data["archive"], data["member"])]
        mine = sorted(own, key=lambda s: s["seq"])
        assert [s["text"] for s in mine] == [s["text"] for s in data["segments"]]
        assert [round(s["start_s"], 2) for s in mine] == [round(s["start"], 2) for s in data["segments"]]

    # a word the random model wrote (as its segment's language indexed it) finds its member
    pick = """
        SELECT s.member, l.lexeme FROM segments s, unnest(s.tsv) AS l
        WHERE l.lexeme ~ '^\\w+$' AND l.lexeme <> 'or'
            AND s.tsv @@ websearch_to_tsquery(s.config, l.lexeme)
        ORDER BY s.archive, s.member, s.seq LIMIT 1
    """
    (picked,) = query(pg_dsn, pick)
    word, member = picked["lexeme"], picked["member"]
    assert main(["search", word, "--dsn", pg_dsn, "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert member in {h["member"] for h in hits}
    hit = next(h for h in hits if h["member"] == member)
    assert hit["player"].startswith("ffplay -ss ") and hit["remote_path"].endswith(".flac")
    assert Path(hit["remote_path"]).is_file() and "«" in hit["highlight"]

    assert main(["status", DAY, "--dsn", pg_dsn]) == 0
    assert f"searchable: {len(segments)} segments of 4 members" in capsys.readouterr().out

    # A day done before segments were recorded: `index` reads them back from the JSON files,
    # and each member's speakers with their centroids (what `voices` compares).
    speakers_sql = (
        "SELECT archive, member, speaker, seconds, first_s, centroid FROM member_speakers ORDER BY 1, 2, 3"
    )
    speakers = query(pg_dsn, speakers_sql)
    assert speakers and all(len(r["centroid"]) == 192 for r in speakers)
    query(pg_dsn, "DELETE FROM member_speakers RETURNING 1")
    query(pg_dsn, "DELETE FROM segments RETURNING 1")
    query(pg_dsn, "UPDATE audio_files SET searchable_segments = NULL RETURNING 1")
    assert main(["status", DAY, "--dsn", pg_dsn]) == 0
    assert "4 done members not yet (streaming-pipeline index 2025-01-25)" in capsys.readouterr().out
    lost = next((tmp_path / "remote").rglob("*.json"))
    kept = lost.read_bytes()
    lost.unlink()
    args = ["index", DAY, "--dsn", pg_dsn, "--remote", str(tmp_path / "remote"), "--scratch-dir",
            str(tmp_path / "scratch")]  # fmt: skip
    assert main(args) == 1  # one member left, and said why
    out = capsys.readouterr()
    assert "3 members made searchable" in out.out and "1 left" in out.out
    assert lost.stem in out.err
    lost.write_bytes(kept)
    assert main(args) == 0
    assert "1 members made searchable" in capsys.readouterr().out
    assert _searchable(pg_dsn) == recorded
    assert len(query(pg_dsn, "SELECT 1 FROM segments")) == len(segments)
    back = query(pg_dsn, speakers_sql)
    assert [(r["member"], r["speaker"]) for r in back] == [(r["member"], r["speaker"]) for r in speakers]
    for old, new in zip(speakers, back, strict=True):
        assert max(abs(a - b) for a, b in zip(old["centroid"], new["centroid"], strict=True)) <= 5e-5
    assert main(args) == 0  # nothing left to do
    assert "0 members made searchable (0 segments)" in capsys.readouterr().out
    assert not any((tmp_path / "scratch").rglob("*.json"))


@pytest.mark.realmodel
@pytest.mark.slow
def test_real_speech_is_found_at_the_second_it_was_said(
    tmp_path: Path, pg_dsn: str, whisper_base: Path, realspeech: Path, make_archive, capsys
) -> None:
    """whisper-base on recorded speech, words timed: a phrase of JFK's finds him within 1 s of the
    time faster-whisper gives that word; a French query finds the French recording; a word said in
    no recording finds nothing; Chinese is found inside a longer word."""
    from faster_whisper import WhisperModel

    files = ["fw_jfk.flac", "sr_french.aiff", "wn_aishell-BAC009S0724W0121.wav", "ps_cards_001.wav"]
    make_archive([(f"speech/{n}", (realspeech / "audio" / n).read_bytes()) for n in files], "09_00.tar.xz")
    options = _options(tmp_path, pg_dsn, whisper_base, "--beam-size", "5", "--timestamps", "word")
    assert main(["process-day", DAY, *options]) == 0
    capsys.readouterr()

    model = WhisperModel(str(whisper_base), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(
        str(realspeech / "audio" / "fw_jfk.flac"), beam_size=5, word_timestamps=True
    )
    words = [w for s in segments for w in s.words or ()]
    ask = next(w.start for w in words if w.word.strip().lower() == "ask")

    assert main(["search", '"ask not what your country"', "--dsn", pg_dsn, "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits[0]["member"] == "speech/fw_jfk.flac" and hits[0]["language"] == "en"
    assert abs(hits[0]["at"] - ask) < 1.0, (hits[0], ask)

    assert main(["search", "dictée", "--language", "fr", "--dsn", pg_dsn, "--json"]) == 0
    (french,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert french["member"] == "speech/sr_french.aiff"

    assert main(["search", "zeppelin", "--dsn", pg_dsn]) == 1
    assert "no segment matches 'zeppelin'" in capsys.readouterr().err

    # whisper-base writes this AISHELL clip as 廣州市佛地產中間協會分析 (traditional characters)
    assert main(["search", "協會", "--dsn", pg_dsn, "--json"]) == 0
    (zh,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert zh["member"] == "speech/wn_aishell-BAC009S0724W0121.wav" and "«協會»" in zh["highlight"]
    assert zh["language"] == "zh"

"""The speaker stage in a run: every transcript gets its speakers, its RTTM beside the FLAC is
staged, uploaded and recorded like the subtitles; off with `--no-speakers`; a bad model file stops
the run before any member is touched. Structure only (the random CAM++ and the tiny Whisper);
what the speakers are is measured on recorded conversations (test_speakers_dev.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from streaming_pipeline.stages.subtitles import render
from streaming_pipeline.transcript import Segment, Transcript, Word

from ...conftest import DAY, make_day, query, worker_options


def _process(tmp_path: Path, dsn: str, model: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    (archive,) = make_day(tmp_path, ["12_30"], members=3)
    argv = [sys.executable, "-m", "streaming_pipeline", "process-tar", DAY, str(archive), "12_30",
            *worker_options(tmp_path, dsn, model), "--subtitles", "srt,vtt", "--timestamps", "word",
            *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_every_transcript_has_speakers_and_an_rttm_uploaded_with_it(
    tmp_path: Path, pg_dsn: str, tiny_model: Path
) -> None:
    done = _process(tmp_path, pg_dsn, tiny_model)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = query(pg_dsn, "SELECT member, status, subtitles, remote_path FROM audio_files ORDER BY member")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    remote = tmp_path / "remote"
    with_speech = 0
    for row in rows:
        flac = remote / row["remote_path"].removeprefix(str(remote) + "/")
        data = json.loads(flac.with_suffix(".json").read_text())
        assert isinstance(data["speakers"], list)
        ids = [s["id"] for s in data["speakers"]]
        assert ids == [f"S{i}" for i in range(1, len(ids) + 1)]
        spoken = [s for s in data["segments"] if any(c.isalnum() for c in s["text"])]  # "." is no one's
        assert all(s["speaker"] in ids for s in spoken)
        assert all(w["speaker"] in ids for s in spoken for w in s["words"])
        assert all("speaker" not in s for s in data["segments"] if s not in spoken)
        assert data["provenance"]["speaker_model"].startswith("sha256:")
        recorded = row["subtitles"].split(",")
        rttm = flac.with_suffix(".rttm")
        if spoken:
            with_speech += 1
            assert recorded == ["srt", "vtt", "rttm"]
            lines = rttm.read_text().splitlines()
            assert lines and all(line.split()[0] == "SPEAKER" and len(line.split()) == 10 for line in lines)
            assert {line.split()[7] for line in lines} == {s["speaker"] for s in spoken}
            vtt = flac.with_suffix(".vtt").read_text()
            assert "<v S1>" in vtt
        else:  # no speech: no speaker invented, an empty RTTM says so
            assert data["speakers"] == [] and rttm.read_text() == ""
    assert with_speech > 0, "the tiny model decodes some text for the speakers to be given to"


def test_without_speakers_there_are_none_and_no_rttm(tmp_path: Path, pg_dsn: str, tiny_model: Path) -> None:
    done = _process(tmp_path, pg_dsn, tiny_model, "--no-speakers", "--timestamps", "segment")
    assert done.returncode == 0, done.stderr[-2000:]
    for j in (tmp_path / "remote").rglob("*.json"):
        data = json.loads(j.read_text())
        assert "speakers" not in data and all(
            "speaker" not in s and "words" not in s for s in data["segments"]
        )
        assert data["provenance"].get("speaker_model") is None
    assert not list((tmp_path / "remote").rglob("*.rttm"))
    assert {r["subtitles"] for r in query(pg_dsn, "SELECT subtitles FROM audio_files")} <= {"srt,vtt", None}


def test_a_damaged_speaker_model_stops_the_run_before_any_member_is_touched(
    tmp_path: Path, pg_dsn: str, tiny_model: Path
) -> None:
    bad = tmp_path / "campplus.onnx"
    bad.write_bytes(b"not a model" * 100)
    done = _process(tmp_path, pg_dsn, tiny_model, "--speaker-model", str(bad))
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "speaker model" in last and str(bad) in last
    assert query(pg_dsn, "SELECT count(*) AS n FROM audio_files")[0]["n"] == 0
    assert not (tmp_path / "remote").exists() or not list((tmp_path / "remote").rglob("*"))
    missing = _process(tmp_path, pg_dsn, tiny_model, "--speaker-model", str(tmp_path / "absent.onnx"))
    assert missing.returncode == 2 and "no speaker model at" in missing.stderr


def test_subtitles_name_the_speaker_where_it_changes() -> None:
    segments = [
        Segment(0.0, 1.0, "Good morning.", speaker="S1"),
        Segment(1.0, 2.0, "Welcome.", speaker="S1"),
        Segment(2.5, 3.5, "Thank you.", speaker="S2"),
    ]
    files = render(segments, ("srt", "vtt"))
    srt_lines = [
        line for line in files["srt"].splitlines() if line and "-->" not in line and not line.isdigit()
    ]
    assert srt_lines == ["S1: Good morning.", "Welcome.", "S2: Thank you."]
    assert "<v S1>Good morning." in files["vtt"] and "<v S2>Thank you." in files["vtt"]
    plain = render(segments, ("srt",), speaker_prefix=False)["srt"]
    assert "S1:" not in plain
    unnamed = render([Segment(0.0, 1.0, "No speakers.")], ("srt", "vtt"))
    assert "<v" not in unnamed["vtt"] and ":" not in unnamed["srt"].splitlines()[2]


def test_a_transcripts_speakers_survive_its_json() -> None:
    t = Transcript.of(
        [Segment(0.0, 1.0, "hi", words=[Word(0.0, 1.0, " hi", 0.9, "S1")], speaker="S1")],
        archive="a", member="m", model="x", language="en", language_probability=1.0, duration=2.0,
    )  # fmt: skip
    from streaming_pipeline.transcript import Speaker

    t = Transcript(**{**t.__dict__, "speakers": (Speaker("S1", 1.0, 0.0, (0.5,) * 4),)})
    back = Transcript.from_json(json.loads(json.dumps(t.as_json())))
    assert back.speakers == (Speaker("S1", 1.0, 0.0, (0.5,) * 4),)  # the centroid too, for `index`
    older = {**t.as_json(), "speakers": [{"id": "S1", "seconds": 1.0, "first_s": 0.0}]}
    assert Transcript.from_json(older).speakers == (Speaker("S1", 1.0, 0.0),)  # a JSON written before
    assert back.segments[0].speaker == "S1" and back.segments[0].words[0].speaker == "S1"
    assert Transcript.from_json({"segments": []}).speakers is None

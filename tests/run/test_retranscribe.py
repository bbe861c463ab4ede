"""`retranscribe`: a day made with one model, made again with another from its FLACs alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.tools.tiny_model import generate_tiny_model

from ..conftest import DAY, SLOW_DECODING, local_day_options, make_day, query, worker_options


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two generated models: same shape, other weights (the second re-transcribes the first's)."""
    root = tmp_path_factory.mktemp("models")
    return generate_tiny_model(root / "tiny-a", seed=1), generate_tiny_model(root / "tiny-b", seed=2)


def _settings(tmp_path: Path, dsn: str, model: Path) -> list[str]:
    return [*worker_options(tmp_path, dsn, model), "--temperatures", "0", "--subtitles", "srt,vtt"]


def _options(tmp_path: Path, dsn: str, model: Path, *extra: str) -> list[str]:
    """A day's run on this machine (process-day, retranscribe)."""
    return [*_settings(tmp_path, dsn, model), *local_day_options(tmp_path), *extra]


def _flacs(remote: Path) -> dict[str, tuple[bytes, int, int]]:
    """Each FLAC's bytes, modification time and inode: rsync replaces a file it sends (a new inode)."""
    return {
        str(p.relative_to(remote)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(remote.rglob("*.flac"))
    }


def _sidecars(remote: Path) -> dict[str, dict]:
    return {str(p.relative_to(remote)): json.loads(p.read_text()) for p in sorted(remote.rglob("*.json"))}


@pytest.mark.slow
def test_a_day_made_again_with_another_model_keeps_its_flacs_and_the_old_transcripts(
    tmp_path: Path, pg_dsn: str, models: tuple[Path, Path], capsys
) -> None:
    first, second = models
    make_day(tmp_path, ["06_00", "06_30"], members=3)
    assert main(["process-day", DAY, *_options(tmp_path, pg_dsn, first)]) == 0
    remote = tmp_path / "remote"
    flacs = _flacs(remote)
    assert len(flacs) == 6
    before = _sidecars(remote)
    assert {j["model"] for j in before.values()} == {"tiny-a"}
    key_a = {j["provenance"]["key"] for j in before.values()}
    assert len(key_a) == 1 and all(j["provenance"]["model_id"].startswith("sha256:") for j in before.values())
    rows = query(pg_dsn, "SELECT model, transcript_key, provenance FROM audio_files WHERE status = 'done'")
    assert {(r["model"], r["transcript_key"]) for r in rows} == {("tiny-a", next(iter(key_a)))}
    capsys.readouterr()

    # --dry-run: what would be done, nothing done.
    assert main(["retranscribe", DAY, "--dry-run", *_options(tmp_path, pg_dsn, second)]) == 0
    out = capsys.readouterr().out
    assert f"{DAY}: 6 members" in out and "in 2 archives to re-transcribe with tiny-b" in out, out
    assert "dry run: 6 members" in out
    assert _sidecars(remote) == before

    # --only-model names a model nothing was made with: nothing to do.
    assert main(["retranscribe", DAY, "--only-model", "large-v2", *_options(tmp_path, pg_dsn, second)]) == 0
    assert f"{DAY}: 0 members" in capsys.readouterr().out

    assert main(["retranscribe", DAY, "--only-model", "tiny-a", *_options(tmp_path, pg_dsn, second)]) == 0
    out = capsys.readouterr().out
    after = _sidecars(remote)
    assert set(after) == set(before)
    for name, sidecar in after.items():
        assert sidecar["model"] == "tiny-b" and sidecar["provenance"]["key"] not in key_a, name
        # what the first run knew of the source audio is kept
        assert sidecar["source_sample_rate"] == before[name]["source_sample_rate"]
    assert _flacs(remote) == flacs, "no FLAC was rewritten, re-sent or touched"
    rows = query(
        pg_dsn, "SELECT archive, member, model, transcript FROM audio_files ORDER BY archive, member"
    )
    assert {r["model"] for r in rows} == {"tiny-b"}
    history = query(pg_dsn, "SELECT archive, member, model, transcript_key FROM transcript_history")
    assert len(history) == 6 and {h["model"] for h in history} == {"tiny-a"}
    assert {h["transcript_key"] for h in history} == key_a
    assert "tiny-b" in out and "re-transcribe" in out
    # the searchable segments are the new transcripts' (the old text is in the history)
    segments = query(pg_dsn, "SELECT archive, member, text FROM segments ORDER BY archive, member, seq")
    assert [(s["archive"], s["member"], s["text"]) for s in segments] == [
        (j["archive"], j["member"], seg["text"])
        for j in sorted(after.values(), key=lambda j: (j["archive"], j["member"]))
        for seg in j["segments"]
    ]

    # The same settings again: nothing to do, nothing written.
    assert main(["retranscribe", DAY, *_options(tmp_path, pg_dsn, second)]) == 0
    assert f"{DAY}: 0 members" in capsys.readouterr().out
    assert len(query(pg_dsn, "SELECT 1 FROM transcript_history")) == 6
    assert _sidecars(remote) == after

    # status says which model made how many of the day's transcripts
    assert main(["status", DAY, "--dsn", pg_dsn]) == 0
    assert "transcripts: 6 by tiny-b" in capsys.readouterr().out


@pytest.mark.slow
def test_a_missing_flac_is_reported_and_its_member_left_as_it_was(
    tmp_path: Path, pg_dsn: str, models: tuple[Path, Path], capsys
) -> None:
    first, second = models
    make_day(tmp_path, ["07_00"], members=2)
    assert main(["process-day", DAY, *_options(tmp_path, pg_dsn, first)]) == 0
    gone, kept = sorted((tmp_path / "remote").rglob("*.flac"))
    gone.unlink()
    assert main(["retranscribe", DAY, *_options(tmp_path, pg_dsn, second)]) == 0
    rows = {r["remote_path"]: r["model"] for r in query(pg_dsn, "SELECT remote_path, model FROM audio_files")}
    assert rows == {str(gone): "tiny-a", str(kept): "tiny-b"}
    assert json.loads(gone.with_suffix(".json").read_text())["model"] == "tiny-a"
    log = "".join(p.read_text() for p in (tmp_path / "logs").glob("stream_tar_*.out"))
    assert "its FLAC is not on the destination" in log
    assert "re-transcribed 1, left as they were 1" in log


@pytest.mark.slow
def test_sigkill_in_the_middle_then_a_rerun_leaves_one_transcript_and_one_history_row_each(
    tmp_path: Path, pg_dsn: str, models: tuple[Path, Path]
) -> None:
    first, second = models
    (archive,) = make_day(tmp_path, ["08_00"], members=6)
    assert main(["process-day", DAY, *_options(tmp_path, pg_dsn, first)]) == 0
    # One member per batch and every temperature, alone: the worker is killed between two
    # batches' commits. The rerun uses the same settings (other settings would be another key).
    slow = ["--stream-batch-size", "1", *SLOW_DECODING]
    argv = [
        sys.executable, "-m", "streaming_pipeline", "process-tar", DAY, str(archive), "08_00",
        *_settings(tmp_path, pg_dsn, second), *slow,
    ]  # fmt: skip
    env = {**os.environ, "PIPELINE_WORK": "retranscribe"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not query(pg_dsn, "SELECT 1 FROM transcript_history"):
            assert proc.poll() is None, "the worker ended before its first batch was recorded"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    mid = query(pg_dsn, "SELECT count(*) AS n FROM transcript_history")[0]["n"]
    assert 1 <= mid < 6, "killed in the middle"
    assert main(["retranscribe", DAY, *_options(tmp_path, pg_dsn, second, *slow)]) == 0
    rows = query(pg_dsn, "SELECT member, model FROM audio_files")
    assert len(rows) == 6 and {r["model"] for r in rows} == {"tiny-b"}
    history = query(
        pg_dsn, "SELECT member, model, count(*) AS n FROM transcript_history GROUP BY member, model"
    )
    assert sorted((h["member"], h["model"], h["n"]) for h in history) == sorted(
        (r["member"], "tiny-a", 1) for r in rows
    )
    assert {j["model"] for j in _sidecars(tmp_path / "remote").values()} == {"tiny-b"}


@pytest.mark.realmodel
@pytest.mark.slow
def test_whisper_base_after_the_tiny_model_hears_the_words(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, whisper_base: Path, realspeech: Path, make_archive, capsys
) -> None:
    """Real speech transcribed first by the random tiny model (no words), then re-transcribed
    with whisper-base from the FLACs alone: the words are there, the old text is in history."""
    files = ["fw_jfk.flac", "ps_cards_001.wav"]
    make_archive(
        [(f"speech/{name}", (realspeech / "audio" / name).read_bytes()) for name in files], "09_00.tar.xz"
    )
    assert main(["process-day", DAY, *_options(tmp_path, pg_dsn, tiny_model)]) == 0
    flacs = _flacs(tmp_path / "remote")
    assert main(["retranscribe", DAY, *_options(tmp_path, pg_dsn, whisper_base), "--beam-size", "5"]) == 0
    rows = {r["member"]: r for r in query(pg_dsn, "SELECT member, model, transcript FROM audio_files")}
    assert {r["model"] for r in rows.values()} == {"whisper-base"}
    assert "ask not what your country" in rows["speech/fw_jfk.flac"]["transcript"].lower()
    sidecar = json.loads(next((tmp_path / "remote").rglob("fw_jfk.json")).read_text())
    assert sidecar["model"] == "whisper-base" and sidecar["segments"][0]["start"] < 1.0
    history = query(pg_dsn, "SELECT member, model FROM transcript_history")
    assert sorted((h["member"], h["model"]) for h in history) == sorted((m, "tiny-whisper") for m in rows)
    assert _flacs(tmp_path / "remote") == flacs


@pytest.mark.slow
def test_speakers_only_adds_speakers_to_a_day_made_without_them_and_keeps_its_words(
    tmp_path: Path, pg_dsn: str, models: tuple[Path, Path], capsys
) -> None:
    first, _ = models
    make_day(tmp_path, ["06_00"], members=3)
    assert (
        main(
            ["process-day", DAY, *_options(tmp_path, pg_dsn, first, "--no-speakers", "--timestamps", "word")]
        )
        == 0
    )
    remote = tmp_path / "remote"
    flacs, before = _flacs(remote), _sidecars(remote)
    assert all("speakers" not in j for j in before.values()) and not list(remote.rglob("*.rttm"))
    capsys.readouterr()

    assert (
        main(["retranscribe", DAY, "--speakers-only", "--no-speakers", *_options(tmp_path, pg_dsn, first)])
        == 2
    )
    # No Whisper is loaded to add speakers: given a folder that is no model, it still runs.
    no_model = tmp_path / "not-a-model"
    no_model.mkdir()
    (no_model / "model.bin").write_bytes(b"not weights")
    assert main(["retranscribe", DAY, "--speakers-only", *_options(tmp_path, pg_dsn, no_model)]) == 0
    assert f"{DAY}: 3 members" in capsys.readouterr().out
    after = _sidecars(remote)
    for name, sidecar in after.items():
        old = before[name]
        assert isinstance(sidecar["speakers"], list) and sidecar["provenance"]["speaker_model"].startswith(
            "sha256:"
        )
        words = [w["word"] for s in sidecar["segments"] for w in s["words"]]
        assert words == [w["word"] for s in old["segments"] for w in s["words"]], "the words as they were"
        assert all(s["speaker"] for s in sidecar["segments"] if any(c.isalnum() for c in s["text"]))
        assert sidecar["provenance"]["model_id"] == old["provenance"]["model_id"]
    spoken = [n for n, j in after.items() if j["segments"]]
    assert spoken and all((remote / n).with_suffix(".rttm").is_file() for n in spoken)
    assert _flacs(remote) == flacs, "no FLAC was rewritten"
    assert len(query(pg_dsn, "SELECT 1 FROM transcript_history")) == 3
    assert query(pg_dsn, "SELECT count(*) AS n FROM segments WHERE speaker IS NOT NULL")[0]["n"] > 0

    assert main(["retranscribe", DAY, "--speakers-only", *_options(tmp_path, pg_dsn, first)]) == 0
    assert f"{DAY}: 0 members" in capsys.readouterr().out, "done once: nothing to do again"

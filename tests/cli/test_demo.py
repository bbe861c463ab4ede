"""The README's first command on this machine: real words where real weights can be had."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming_pipeline.cli import main


@pytest.mark.realmodel
@pytest.mark.slow
def test_demo_prints_real_words_and_subtitles(
    tmp_path: Path, pg_dsn: str, whisper_base: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The demo finds whisper-base in the user's cache (assembled there from the package index by
    the same code the fixture ran), transcribes its espeak-ng sample day with it and prints
    transcripts and the start of an SRT file."""
    cache = tmp_path / "cache"
    (cache / "streaming-pipeline").mkdir(parents=True)
    (cache / "streaming-pipeline" / "whisper-base").symlink_to(whisper_base)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    for name in ("PIPELINE_MODEL", "PIPELINE_DSN", "DB_CREDS", "PIPELINE_OFFLINE", "PIPELINE_REMOTE"):
        monkeypatch.delenv(name, raising=False)
    # The test's own PostgreSQL (the embedded one cannot live under pytest's private tmp dirs).
    rc = main(["demo", "--state-dir", str(tmp_path / "demo"), "--dsn", pg_dsn])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out + captured.err
    assert "model: whisper-base from the package index" in out
    transcripts = out.split("transcripts:", 1)[1].lower()
    spoken = ("morning", "news", "weather", "coast", "traffic", "music", "bulletin", "studio", "bonjour")
    assert sum(word in transcripts for word in spoken) >= 2, out
    assert ".srt:" in out and " --> " in out
    assert "streaming-pipeline serve --remote" in out and "http://127.0.0.1:8750/days/" in out
    srt = sorted((tmp_path / "demo" / "remote").rglob("*.srt"))
    assert srt and all(p.with_suffix(".flac").is_file() for p in srt)


def test_demo_offline_says_it_uses_the_random_model(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Offline, the demo does not reach for the index: it says so and uses the tiny model."""
    monkeypatch.setenv("PIPELINE_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("PIPELINE_MODEL", "PIPELINE_DSN", "DB_CREDS", "PIPELINE_REMOTE", "PIPELINE_SPEAKER_MODEL"):
        monkeypatch.delenv(name, raising=False)
    rc = main(
        ["demo", "--state-dir", str(tmp_path / "demo"), "--archives", "1", "--members", "2", "--dsn", pg_dsn]
    )
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out + captured.err
    assert "tiny random-weight Whisper" in out and "offline" in out
    assert "speakers: a random-weight CAM++" in out
    cached = {p.name for p in (tmp_path / "cache" / "streaming-pipeline").glob("*")}
    assert cached <= {"model-fingerprints"}, "nothing downloaded (the tiny model's fingerprint is cached)"

"""A member's files: one stem, every suffix and media type from one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming_pipeline.member_files import SUFFIXES, FileKind, MemberFiles
from streaming_pipeline.stages.archive import OutputNames


def test_a_members_files_share_the_flacs_stem() -> None:
    files = MemberFiles.of_flac("2025-01-25/06_00/studio a/talk.wav.flac", ["srt", "vtt"])
    assert files.stem == "2025-01-25/06_00/studio a/talk.wav"
    assert files.names() == [
        "2025-01-25/06_00/studio a/talk.wav.flac",
        "2025-01-25/06_00/studio a/talk.wav.json",
        "2025-01-25/06_00/studio a/talk.wav.srt",
        "2025-01-25/06_00/studio a/talk.wav.vtt",
    ]
    assert files.sidecars() == files.names()[1:]
    assert MemberFiles.of_flac(Path("a/b~2.flac")).json == "a/b~2.json"
    assert MemberFiles.of_flac("x.flac").names() == ["x.flac", "x.json"]  # no subtitles recorded


def test_kinds_know_their_suffix_and_media_type() -> None:
    assert [k.suffix for k in FileKind] == list(SUFFIXES) == [".flac", ".json", ".srt", ".vtt", ".rttm"]
    assert FileKind("flac").media_type == "audio/flac" and FileKind.VTT.media_type == "text/vtt"
    with pytest.raises(ValueError):
        FileKind("wav")


def test_two_members_never_share_a_file_name_of_any_kind() -> None:
    names = OutputNames()
    stems = [names.take(n) for n in ("a.wav", "a.mp3", "a.json", "a.flac/x.wav")]
    files = [f for stem in stems for f in MemberFiles(stem, (FileKind.SRT, FileKind.VTT)).names()]
    assert len(files) == len(set(files))

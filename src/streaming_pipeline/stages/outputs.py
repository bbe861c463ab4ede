"""What a member leaves in its stage beside its FLAC: the transcript's JSON and the subtitle
files, under the names `MemberFiles` gives them. Called from the run's finisher thread."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..member_files import FileKind, MemberFiles
from ..transcript import Transcript
from .speakers.policy import rttm
from .subtitles import render


def write_beside(
    flac: Path, transcript: Transcript, formats: Sequence[str], *, speaker_prefix: bool = True
) -> str | None:
    """The member's JSON, subtitle files and (where speakers were attributed) RTTM next to its
    FLAC (in a stage); the files written beside the JSON, as the member's row records them
    (`srt,vtt,rttm`), None without any."""
    files = MemberFiles.of_flac(flac)
    Path(files.json).write_text(json.dumps(transcript.as_json(), ensure_ascii=False, indent=1))
    written = render(transcript.segments, formats, speaker_prefix=speaker_prefix)
    if transcript.speakers is not None:
        written[FileKind.RTTM.value] = rttm(Path(files.stem).name, transcript.turns)
    for fmt, text in written.items():
        Path(files.name(FileKind(fmt))).write_text(text, encoding="utf-8")
    return ",".join(written) or None


def remove_staged(flac: Path, formats: Sequence[str]) -> None:  # formats: as write_beside returned
    """A member's staged FLAC and what `write_beside` wrote next to it, gone from the stage."""
    for name in MemberFiles.of_flac(flac, formats).names():
        Path(name).unlink(missing_ok=True)

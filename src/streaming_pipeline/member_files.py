"""A member's files: its FLAC and the siblings of the same stem (JSON, subtitles, speaker turns).

The rule is written here once: the worker stages them under these names, the rerun's reconcile
and re-transcription ask the destination for them, the index and the export read them back, the
archive reader keeps two members' names apart by them, and the web view serves them with these
media types. Nothing else of the package spells a suffix.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath


class FileKind(enum.StrEnum):
    """One of a member's files, by the name the web view and the settings give it."""

    FLAC = "flac"
    JSON = "json"
    SRT = "srt"
    VTT = "vtt"
    RTTM = "rttm"  # who spoke when (NIST RTTM), where speakers were attributed

    @property
    def suffix(self) -> str:
        return f".{self.value}"

    @property
    def media_type(self) -> str:
        """What a browser is told the file is (SRT as text: browsers display it)."""
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    FileKind.FLAC: "audio/flac",
    FileKind.JSON: "application/json",
    FileKind.SRT: "text/plain",
    FileKind.VTT: "text/vtt",
    FileKind.RTTM: "text/plain",
}
# The subtitle formats a member may have, in the order they are written and recorded.
SUBTITLE_KINDS = (FileKind.SRT, FileKind.VTT)
# The files beside the JSON that a member's row records (its `subtitles` column): subtitles, then
# the speaker turns.
EXTRA_KINDS = (*SUBTITLE_KINDS, FileKind.RTTM)
# Every suffix a member's file may end in: two members' files must differ in all of them.
SUFFIXES = tuple(kind.suffix for kind in FileKind)


@dataclass(frozen=True)
class MemberFiles:
    """The names of one member's files, as relative paths that share `stem` (the FLAC's path
    without `.flac`): under a stage, under the destination's root, or in a fetched folder."""

    stem: str
    subtitles: tuple[FileKind, ...] = ()  # the subtitle (and RTTM) files the member has

    @classmethod
    def of_flac(cls, flac: str | PurePath, subtitles: Iterable[str] = ()) -> MemberFiles:
        """The files of the member whose FLAC is `flac` (`subtitles` as recorded: `srt`, `vtt`, `rttm`)."""
        text = str(flac)
        stem = text.removesuffix(FileKind.FLAC.suffix)
        return cls(stem, tuple(FileKind(s) for s in subtitles))

    def name(self, kind: FileKind) -> str:
        return self.stem + kind.suffix

    @property
    def flac(self) -> str:
        return self.name(FileKind.FLAC)

    @property
    def json(self) -> str:
        return self.name(FileKind.JSON)

    def names(self) -> list[str]:
        """Every file the member has: the FLAC, the JSON, its subtitles and speaker turns."""
        return [self.flac, self.json, *(self.name(kind) for kind in self.subtitles)]

    def sidecars(self) -> list[str]:
        """The files written beside the FLAC (JSON and subtitles)."""
        return self.names()[1:]

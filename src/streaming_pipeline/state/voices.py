"""`member_speakers` read and written by day: each member-speaker's centroid, for `voices`, which
recognises the same voice across a day's members and slots, and the voice it was given."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from .db import Table


@dataclass(frozen=True)
class MemberSpeaker:
    """One speaker of one member of a day, with its centroid embedding (unit length)."""

    archive: str
    member: str  # its path in the archive
    speaker: str  # S1, S2, ... within the member
    seconds: float
    first_s: float
    centroid: tuple[float, ...]
    voice: str | None = None  # V1, V2, ... across the day; None until `voices` ran


class VoiceTable(Table):
    """The day's member-speakers (done members only) and their voices."""

    def of_day(self, day: dt.date) -> list[MemberSpeaker]:
        rows = self._db.query(
            "SELECT s.archive, s.member, s.speaker, s.seconds, s.first_s, s.centroid, s.voice"
            " FROM member_speakers s JOIN audio_files f USING (archive, member)"
            " WHERE f.day = %s AND f.status = 'done' ORDER BY f.slot, s.archive, s.member, s.first_s",
            (day,),
        )
        return [
            MemberSpeaker(
                r["archive"],
                r["member"],
                r["speaker"],
                float(r["seconds"]),
                float(r["first_s"]),
                tuple(float(v) for v in r["centroid"]),
                r["voice"],
            )
            for r in rows
        ]

    def record(self, speakers: Sequence[MemberSpeaker], voices: Sequence[str]) -> None:
        """Each member-speaker's voice, in one transaction."""
        rows = [(v, s.archive, s.member, s.speaker) for s, v in zip(speakers, voices, strict=True)]
        sql = "UPDATE member_speakers SET voice = %s WHERE archive = %s AND member = %s AND speaker = %s"
        self._db.transaction(lambda cur: cur.executemany(sql, rows), "record voices")


__all__ = ["MemberSpeaker", "VoiceTable"]

"""`streaming-pipeline voices DAY` (and the day's finalize job): the same voice recognised across
a day's members and slots. Each done member's speakers have a centroid embedding (recorded with
the member); the day's centroids are clustered (stages/speakers/policy.voices) and each
member-speaker's voice (`V1`, `V2`, ...) is recorded in `member_speakers.voice`."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np

from ..stages.speakers.policy import voices
from ..state.store import ProgressStore
from ..state.voices import MemberSpeaker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DayVoices:
    """A day's member-speakers with the voices they were given."""

    day: dt.date
    speakers: tuple[MemberSpeaker, ...]

    @property
    def voices(self) -> int:
        return len({s.voice for s in self.speakers})

    def lines(self) -> list[str]:
        """Each voice with where it speaks: its members (slot and path) and seconds."""
        by_voice: dict[str, list[MemberSpeaker]] = {}
        for s in self.speakers:
            by_voice.setdefault(s.voice or "?", []).append(s)
        out = [f"{self.day}: {len(self.speakers)} member-speakers, {self.voices} voices"]
        for voice, items in by_voice.items():
            total = sum(s.seconds for s in items)
            out.append(f"{voice}  {total:8.1f} s in {len({(s.archive, s.member) for s in items})} members")
            out += [f"    {s.archive}  {s.member}  {s.speaker}  {s.seconds:.1f} s" for s in items]
        return out

    def json_lines(self) -> list[dict[str, str]]:
        return [{"member": s.member, "speaker": s.speaker, "voice": s.voice or ""} for s in self.speakers]


def find_voices(store: ProgressStore, day: dt.date) -> DayVoices:
    """The day's voices, clustered from its member-speakers' centroids and recorded."""
    found = store.voices.of_day(day)
    with_centroid = [s for s in found if s.centroid]
    names = voices(np.array([s.centroid for s in with_centroid])) if with_centroid else []
    store.voices.record(with_centroid, names)
    speakers = tuple(
        MemberSpeaker(s.archive, s.member, s.speaker, s.seconds, s.first_s, s.centroid, v)
        for s, v in zip(with_centroid, names, strict=True)
    )
    result = DayVoices(day, speakers)
    log.info("%s: %d member-speakers, %d voices", day, len(speakers), result.voices)
    return result


__all__ = ["DayVoices", "find_voices"]

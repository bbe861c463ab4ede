"""`streaming-pipeline index DAYS`: make days transcribed before segments were recorded searchable,
from the JSON files on the destination (no audio is read, nothing is written there): each
member's segments, and its speakers with their centroids (for `voices`) where the JSON has them.

Per page of done members without recorded segments: which JSONs the destination has (one rsync
listing), those fetched into scratch (one rsync), their segments written with the members' counts
in one transaction. A page is committed before the next is read, so a killed run resumes where it
stopped; a member whose JSON is missing or unreadable is reported and left for a later run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..config import PipelineConfig
from ..destination import Rsync
from ..member_files import MemberFiles
from ..state.records import MemberRecord
from ..state.segments import Unindexed
from ..state.states import MemberStatus
from ..state.store import ProgressStore
from ..transcript import Transcript

log = logging.getLogger(__name__)

PAGE = 500  # members per listing, fetch and transaction


@dataclass
class IndexResult:
    day: dt.date
    members: int = 0  # made searchable by this run
    segments: int = 0
    left: list[str] = field(default_factory=list)  # "member: why", left without segments

    def summary_line(self) -> str:
        line = f"{self.day}: {self.members} members made searchable ({self.segments} segments)"
        return line + (f", {len(self.left)} left (their JSON is missing or unreadable)" if self.left else "")


class DayIndexer:
    """One day's done members' segments, read back from their JSON sidecars."""

    def __init__(self, config: PipelineConfig, store: ProgressStore, day: dt.date) -> None:
        self.store = store
        self.day = day
        self.rsync = Rsync.of(config.destination)
        self.destination = self.rsync.destination
        self.scratch = config.scratch_dir / "index" / day.isoformat()

    def run(self) -> IndexResult:
        result = IndexResult(self.day)
        shutil.rmtree(self.scratch, ignore_errors=True)
        after = ("", "")
        try:
            number = 0
            while page := self.store.segments.unindexed(self.day, after, PAGE):
                after = (page[-1].archive, page[-1].member)
                self._page(page, self.scratch / f"page-{number}", result)
                number += 1
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        for reason in result.left:
            log.warning("%s: not indexed: %s", self.day, reason)
        return result

    def _page(self, page: list[Unindexed], folder: Path, result: IndexResult) -> None:
        sidecars = {(m.archive, m.member): _sidecar(self.destination.relpath(m.remote_path)) for m in page}
        there = self.rsync.existing(list(sidecars.values()), folder / "check")
        present = [p for p in sidecars.values() if p in there]
        if present:
            self.rsync.fetch(present, folder / "json", label=f"{len(present)} transcripts of {self.day}")
        by_archive: dict[str, list[MemberRecord]] = defaultdict(list)
        for m in page:
            relpath = sidecars[(m.archive, m.member)]
            if relpath not in there:
                result.left.append(f"{m.archive} {m.member}: no {relpath} on the destination")
                continue
            try:
                data = json.loads((folder / "json" / relpath).read_text(encoding="utf-8"))
                transcript = Transcript.from_json(data)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                result.left.append(f"{m.archive} {m.member}: {relpath} cannot be read: {exc}")
                continue
            by_archive[m.archive].append(
                MemberRecord(
                    m.member,
                    MemberStatus.DONE,
                    language=transcript.language,
                    searchable_segments=len(transcript.segments),
                    segments=transcript.segments,
                    speakers=transcript.speakers,  # with their centroids, where the JSON has them
                )
            )
        for archive, records in by_archive.items():
            filled = self.store.segments.index(archive, records)
            result.members += len(filled)
            result.segments += sum(r.searchable_segments or 0 for r in filled)
        shutil.rmtree(folder, ignore_errors=True)


def _sidecar(flac: str) -> str:
    return MemberFiles.of_flac(flac).json

"""Progress in PostgreSQL: the connection with each concern's table on it.

`ProgressStore` is the connection (db.py: transactions, retries, the lease fence) and carries one
object per concern: `store.archives` (archives.py), `store.members` (members.py), `store.leases`
(lease_table.py), `store.days` (day_table.py), `store.datasets` (datasets.py),
`store.transcripts` (transcripts.py: provenance, re-transcription, history), `store.browse`
(browse.py: the web view's reads), `store.segments` (segments.py: the searchable segments,
written inside the members' and transcripts' transactions); the day report's queries are
reports.py. Callers hold this one object rather than importing the pieces: every piece must work
through the same connection, its lock and its fence (a write of a worker whose lease was taken is
refused whichever table it goes to), and one object is the simplest way to hand them that.
"""

from __future__ import annotations

from typing import Any

from .archives import ArchiveTable
from .browse import BrowseQueries
from .datasets import DatasetTable
from .day_table import DayTable
from .db import SCHEMA_VERSION, Database, migrations
from .lease_table import LeaseTable
from .members import MemberTable
from .records import ArchiveKey, DatasetResume, Holder, MemberRecord, Owner, ShardCheckpoint, StageTiming
from .segments import SegmentTable
from .transcripts import TranscriptTable
from .voices import VoiceTable

__all__ = [
    "SCHEMA_VERSION",
    "ArchiveKey",
    "DatasetResume",
    "Holder",
    "MemberRecord",
    "Owner",
    "ProgressStore",
    "ShardCheckpoint",
    "StageTiming",
    "migrations",
]


class ProgressStore(Database):
    """The connection and the tables that write through it."""

    def __init__(self, dsn: str, **options: Any) -> None:
        """`options`: Database's (attempts, patience, backoff_max, sleep, clock, connect_timeout)."""
        super().__init__(dsn, **options)
        self.archives = ArchiveTable(self)
        self.segments = SegmentTable(self)
        self.members = MemberTable(self, self.segments)
        self.leases = LeaseTable(self)
        self.days = DayTable(self)
        self.datasets = DatasetTable(self)
        self.transcripts = TranscriptTable(self, self.segments)
        self.browse = BrowseQueries(self)  # the web view's reads
        self.voices = VoiceTable(self)

"""The states the database holds, as names the code can check: `ArchiveState.DONE == "done"`.

StrEnums, so their values are the very strings in the tables (and the CHECK constraints of
migrations/), psycopg binds them as text, and JSON and logs show the plain word.
"""

from __future__ import annotations

from enum import StrEnum


class ArchiveState(StrEnum):
    """An archive's (archives.state), and a dataset run's (dataset_runs.state, never damaged)."""

    PENDING = "pending"
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # stopped by a signal: a rerun (Slurm's requeue) resumes it
    DONE = "done"
    FAILED = "failed"
    DAMAGED = "damaged"  # its stream did not reach its real end: the members before it are done


# The states an archive stays in until someone acts (a rerun, a retry): nothing runs for it.
FINAL_ARCHIVE_STATES = frozenset({ArchiveState.DONE, ArchiveState.FAILED, ArchiveState.DAMAGED})


class MemberStatus(StrEnum):
    """A member's (audio_files.status)."""

    UPLOADING = "uploading"  # transcribed and staged; done once rsync confirmed the upload
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"  # never written to disk: the reason is in `error`

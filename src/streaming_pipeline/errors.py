"""Error hierarchy: what callers catch, and which failures are worth retrying."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class; the CLI prints these as one line and exits non-zero."""

    exit_code = 1


class ConfigError(PipelineError):
    """A bad invocation: wrong flag, missing file, unwritable directory. Nothing was started."""

    exit_code = 2


class ArchiveError(PipelineError):
    """The archive stream could not be read to its end (truncated, corrupt, not xz)."""


class ConversionError(PipelineError):
    """One member could not be decoded or is unusable as audio; it fails alone."""


class TranscriptionError(PipelineError):
    """The model could not be loaded or failed on a file."""


class SpeakerModelError(PipelineError):
    """The speaker model is missing, damaged or not CAM++: said before any member is touched."""

    exit_code = 2


class UploadError(PipelineError):
    """rsync failed. `returncode` is rsync's exit status (None when it timed out)."""

    def __init__(self, message: str, returncode: int | None, retryable: bool) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.retryable = retryable


class StoreError(PipelineError):
    """The progress database is unreachable or rejected a statement."""


class RefusedValues(StoreError):
    """The database refused a statement for the values it was given (SQLSTATE class 22, data
    exception, or 54, a program limit such as a tsvector too long): the data's fault, not the
    database's, so retrying the same values cannot help, and other rows can still be written."""


class LeaseLost(StoreError):
    """Another worker took over the archive (this one stalled past its lease): this worker must
    stop without writing anything more. Not a failure of the archive, whose new holder goes on."""

    exit_code = 0

    def __init__(self, archive: str, holder: str) -> None:
        super().__init__(f"lost the lease on {archive} to {holder}")
        self.archive = archive
        self.holder = holder


class RunBusy(PipelineError):
    """Another live process holds the process-dataset run."""


class DatasetError(PipelineError):
    """A dataset source cannot be opened or read (unknown name, missing column), or an export
    has nothing to export."""


class ScratchFullError(PipelineError):
    """The scratch directory ran out of space."""

"""ArchiveWorker failure paths that the real model cannot produce on demand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from streaming_pipeline.config import PipelineConfig
from streaming_pipeline.run.worker import ArchiveWorker
from streaming_pipeline.state.store import ProgressStore

from ..conftest import DAY, make_day, query


class _BrokenTranscriber:
    """Stands in for faster-whisper failing in a way it does not announce (a bug, an OOM)."""

    model_name = "broken"

    def __init__(self, _config: PipelineConfig) -> None:
        pass

    def transcribe(self, audio: Any, *, archive: str, member: str) -> dict[str, Any]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_crash_leaves_the_archive_failed_with_its_reason_not_running(tmp_path: Path, pg_dsn: str) -> None:
    (archive,) = make_day(tmp_path, ["14_00"], members=2)
    store = ProgressStore(pg_dsn)
    store.init_schema()
    config = PipelineConfig(
        dsn=pg_dsn, remote=str(tmp_path / "remote"), scratch_dir=tmp_path / "scratch", num_workers=1
    )
    worker = ArchiveWorker(
        config, day=dt.date.fromisoformat(DAY), archive_path=archive, slot="14_00", store=store,
        transcriber_factory=_BrokenTranscriber,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="illegal memory access"):
        worker.run()
    store.close()
    (row,) = query(pg_dsn, "SELECT state, error FROM archives")
    assert row["state"] == "failed"
    assert row["error"] == "worker stopped by an error: CUDA error: an illegal memory access was encountered"
    assert query(pg_dsn, "SELECT count(*) AS n FROM audio_files WHERE status = 'done'")[0]["n"] == 0

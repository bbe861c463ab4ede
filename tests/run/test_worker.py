"""ArchiveWorker failure paths that the real model cannot produce on demand."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from streaming_pipeline.config import PipelineConfig
from streaming_pipeline.run.worker import ArchiveWorker
from streaming_pipeline.stages.audio import AudioInfo, convert_to_flac
from streaming_pipeline.stages.transcribe import Transcriber
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


# -- conversion processes that die or hang, output names that clash, damaged streams ----------

CRASH = b"CRASH-this-process"
HANG = b"HANG-this-process"


def convert_or_misbehave(src: str, dst: str, *, remove_source: bool = False) -> AudioInfo:
    """The real conversion, except for members whose bytes ask to kill their (real, spawned)
    process with SIGKILL or to hang: no public file reliably crashes libsndfile."""
    head = Path(src).read_bytes()[:32]
    if head.startswith(CRASH):
        os.kill(os.getpid(), signal.SIGKILL)
    if head.startswith(HANG):
        time.sleep(3600)
    return convert_to_flac(src, dst, remove_source=remove_source)


def _worker(tmp_path: Path, pg_dsn: str, archive: Path, model: Path, **settings: Any) -> ArchiveWorker:
    store = ProgressStore(pg_dsn)
    store.init_schema()
    config = PipelineConfig(
        dsn=pg_dsn, remote=str(tmp_path / "remote"), scratch_dir=tmp_path / "scratch", model=str(model),
        device="cpu", beam_size=1, num_workers=2, stream_batch_size=3, upload_retries=2, **settings,
    )  # fmt: skip
    return ArchiveWorker(
        config, day=dt.date.fromisoformat(DAY), archive_path=archive, slot="12_30", store=store,
        transcriber_factory=Transcriber, converter=convert_or_misbehave,
    )  # fmt: skip


def _statuses(dsn: str) -> dict[str, tuple[str, str | None]]:
    return {r["member"]: (r["status"], r["error"]) for r in query(dsn, "SELECT * FROM audio_files")}


@pytest.mark.slow
def test_a_member_whose_conversion_process_dies_or_hangs_fails_alone_and_the_run_goes_on(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, make_archive
) -> None:
    files = [clips[0], ("crash.wav", CRASH + bytes(100)), clips[1], ("hang.wav", HANG + bytes(100)), clips[2]]
    archive = make_archive(files)
    worker = _worker(tmp_path, pg_dsn, archive, tiny_model, decode_timeout=5.0)
    started = time.monotonic()
    result = worker.run()
    wall = time.monotonic() - started
    worker.store.close()
    status = _statuses(pg_dsn)
    assert status["crash.wav"] == ("failed", "the conversion process died (killed by SIGKILL)")
    assert status["hang.wav"] == ("failed", "decoding timed out after 5s (its process was ended)")
    assert {status[name][0] for name, _ in clips[:3]} == {"done"}
    assert result.state == "done" and result.done == 3 and result.failed == 2
    assert wall < 300, "the hung member's hour was not waited for"  # it takes ~30 s here


@pytest.mark.slow
def test_members_whose_output_names_clash_each_get_an_outcome(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, make_archive
) -> None:
    """`a.wav` is written as `a.flac`, which `a.flac/x.wav` needs as a folder: it goes to
    `a.flac~2/x.flac` (it used to raise in the finisher and fail the whole run)."""
    archive = make_archive([("a.wav", clips[0][1]), ("a.flac/x.wav", clips[0][1]), ("a.flac", clips[1][1])])
    result = _worker(tmp_path, pg_dsn, archive, tiny_model).run()
    assert result.state == "done" and result.done == 3
    remote = tmp_path / "remote" / DAY / "12_30"
    got = {r["member"]: r["remote_path"] for r in query(pg_dsn, "SELECT * FROM audio_files")}
    assert {m: Path(p).relative_to(remote).as_posix() for m, p in got.items()} == {
        "a.wav": "a.flac",
        "a.flac/x.wav": "a.flac~2/x.flac",
        "a.flac": "a.flac.flac",
    }
    assert all(
        (remote / rel).is_file() for rel in ("a.flac", "a.flac~2/x.flac", "a.flac~2/x.json", "a.flac.flac")
    )

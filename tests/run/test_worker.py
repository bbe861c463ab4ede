"""ArchiveWorker failure paths that the real model cannot produce on demand."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streaming_pipeline.config import PipelineConfig
from streaming_pipeline.run.job_environment import JobEnvironment
from streaming_pipeline.run.worker import ArchiveWorker
from streaming_pipeline.stages.asr.loader import Transcriber
from streaming_pipeline.stages.asr.options import DecodeOptions, LoadOptions
from streaming_pipeline.stages.asr.protocol import CPU
from streaming_pipeline.stages.audio import AudioInfo, convert_to_flac
from streaming_pipeline.state.store import ProgressStore
from streaming_pipeline.transcript import Segment, Transcript, Word

from ..conftest import DAY, make_day, query


class _BrokenTranscriber:
    """Stands in for faster-whisper failing in a way it does not announce (a bug, an OOM)."""

    model_name = "broken"

    device = CPU

    def __init__(self, _options: LoadOptions) -> None:
        pass

    def transcribe(self, audio: Any, _options: DecodeOptions, *, archive: str, member: str) -> Transcript:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


SPEAKERS = Path(os.environ["PIPELINE_SPEAKER_MODEL"])  # the random CAM++ (conftest)


def test_a_crash_leaves_the_archive_failed_with_its_reason_not_running(tmp_path: Path, pg_dsn: str) -> None:
    (archive,) = make_day(tmp_path, ["14_00"], members=2)
    store = ProgressStore(pg_dsn)
    store.init_schema()
    config = PipelineConfig(
        dsn=pg_dsn,
        remote=str(tmp_path / "remote"),
        scratch_dir=tmp_path / "scratch",
        speaker_model=SPEAKERS,
        num_workers=1,
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


def convert_or_misbehave(src: str, dst: str, **options: bool) -> AudioInfo:
    """The real conversion, except for members whose bytes ask to kill their (real, spawned)
    process with SIGKILL or to hang: no public file reliably crashes libsndfile."""
    head = Path(src).read_bytes()[:32]
    if head.startswith(CRASH):
        os.kill(os.getpid(), signal.SIGKILL)
    if head.startswith(HANG):
        time.sleep(3600)
    return convert_to_flac(src, dst, **options)


def _worker(tmp_path: Path, pg_dsn: str, archive: Path, model: Path, **settings: Any) -> ArchiveWorker:
    store = ProgressStore(pg_dsn)
    store.init_schema()
    config = PipelineConfig(
        dsn=pg_dsn, remote=str(tmp_path / "remote"), scratch_dir=tmp_path / "scratch", model=str(model),
        speaker_model=SPEAKERS,
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


_STUCK_READER = """
import sys, time
from streaming_pipeline.stages import archive

take = archive.ArchiveReader._take

def stuck(self, stream, info, *rest):  # a reader stuck in a read Python cannot interrupt
    if info.name == "stuck.wav":
        open(sys.argv[1], "w").close()
        time.sleep(3600)
    return take(self, stream, info, *rest)

archive.ArchiveReader._take = stuck
from streaming_pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_worker_whose_reader_is_stuck_exits_within_the_grace_after_one_sigterm(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, make_archive
) -> None:
    """The reader is a stand-in that blocks (the spinning read it stands for is fixed): one
    SIGTERM, and the watchdog records the archive `interrupted` and ends the process at the
    grace, where the run used to wait for the reader thread for ever."""
    archive = make_archive([clips[0], ("stuck.wav", clips[1][1]), clips[2]])
    marker = tmp_path / "reader-is-stuck"
    env = {**os.environ, "PIPELINE_STOP_GRACE": "4"}
    args = [
        "process-tar", DAY, str(archive), "12_30", "--dsn", pg_dsn, "--remote", str(tmp_path / "remote"),
        "--scratch-dir", str(tmp_path / "scratch"), "--model", str(tiny_model), "--device", "cpu",
        "--num-workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", _STUCK_READER, str(marker), *args], env=env)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the reader never reached stuck.wav"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    rc = proc.wait(timeout=120)
    assert rc == 75
    assert time.monotonic() - signalled < 4 + 10  # the grace, plus the start of a loaded machine's exit
    (row,) = query(pg_dsn, "SELECT state, error FROM archives")
    assert row["state"] == "interrupted"
    assert row["error"] == "still stopping 4s after stopped by SIGTERM (a stage is stuck)"


def test_an_interrupted_job_past_max_restarts_ends_failed_instead_of_requeueing(
    tmp_path: Path, pg_dsn: str, tiny_model: Path
) -> None:
    (archive,) = make_day(tmp_path, ["12_30"], members=2)
    store = ProgressStore(pg_dsn)
    store.init_schema()
    for restarts, expected in ((2, "interrupted"), (3, "failed")):
        config = PipelineConfig(
            dsn=pg_dsn, remote=str(tmp_path / "remote"), scratch_dir=tmp_path / "scratch",
            speaker_model=SPEAKERS,
            model=str(tiny_model), device="cpu", num_workers=1, max_restarts=3,
        )  # fmt: skip
        job = JobEnvironment.of({"SLURM_JOB_ID": "77_0", "SLURM_RESTART_COUNT": str(restarts)})
        worker = ArchiveWorker(
            config, day=dt.date.fromisoformat(DAY), archive_path=archive, slot="12_30", store=store,
            transcriber_factory=Transcriber, environment=job,
        )  # fmt: skip
        worker.request_stop("stopped by SIGUSR1")  # before it starts: nothing is done
        result = worker.run()
        assert result.state == expected
    store.close()
    (row,) = query(pg_dsn, "SELECT state, error FROM archives")
    assert row["state"] == "failed"
    assert row["error"] == "stopped by SIGUSR1; requeued 3 times already (PIPELINE_MAX_RESTARTS=3)"


_POISON = """
import os, signal, sys
from streaming_pipeline.stages.asr import loader as transcribe

real = transcribe.Transcriber.transcribe

def transcribe_or_die(self, audio, options, *, archive, member):  # a decoder library's segfault
    if member == "poison.wav":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, audio, options, archive=archive, member=member)

transcribe.Transcriber.transcribe = transcribe_or_die
from streaming_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_member_that_kills_the_worker_twice_is_failed_on_the_third_run(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, make_archive
) -> None:
    """The whole worker dies (SIGKILL from a stand-in for the decoder's segfault) on one member.
    Run 2 finds it (and the members decoded beside it) in flight when run 1 died: suspects, each
    decoded alone, so run 2's death is charged to the poison member only. Run 3 fails it with
    its reason and skips it; every other member is done."""
    files = [clips[0], clips[1], ("poison.wav", clips[2][1]), clips[3], clips[4]]
    archive = make_archive(files)
    args = [
        "process-tar", DAY, str(archive), "12_30", "--dsn", pg_dsn, "--remote", str(tmp_path / "remote"),
        "--scratch-dir", str(tmp_path / "scratch"), "--model", str(tiny_model), "--device", "cpu",
        "--num-workers", "1", "--decoder", "per-member", "--transcribe-workers", "2",
        "--stream-batch-size", "2",
    ]  # fmt: skip
    runs = [
        subprocess.run([sys.executable, "-c", _POISON, *args], capture_output=True, text=True, timeout=300)
    ]
    assert runs[0].returncode == -signal.SIGKILL
    first = {r["member"]: r["crashed_runs"] for r in query(pg_dsn, "SELECT * FROM member_crashes")}
    assert first == {} or set(first.values()) == {0}  # counted by the next run, which holds the archive
    runs.append(
        subprocess.run([sys.executable, "-c", _POISON, *args], capture_output=True, text=True, timeout=300)
    )
    assert runs[1].returncode == -signal.SIGKILL
    crashed = {
        r["member"]: r["crashed_runs"]
        for r in query(pg_dsn, "SELECT * FROM member_crashes WHERE crashed_runs > 0")
    }
    assert crashed["poison.wav"] == 1  # run 2 counted run 1's death; its own is counted by run 3
    runs.append(
        subprocess.run([sys.executable, "-c", _POISON, *args], capture_output=True, text=True, timeout=300)
    )
    assert runs[2].returncode == 0, runs[2].stdout + runs[2].stderr
    status = _statuses(pg_dsn)
    assert status["poison.wav"] == ("failed", "crashed the worker in 2 runs")
    assert {status[name][0] for name, _ in files if name != "poison.wav"} == {"done"}
    crashed = {
        r["member"]: r["crashed_runs"]
        for r in query(pg_dsn, "SELECT * FROM member_crashes WHERE crashed_runs > 0")
    }
    assert crashed["poison.wav"] == 2 and all(n == 1 for m, n in crashed.items() if m != "poison.wav")
    assert query(pg_dsn, "SELECT state FROM archives")[0]["state"] == "done"
    assert "was being decoded when 2 runs of this archive died" in runs[2].stderr


# -- a member's own values never fail another member's write ---------------------------------


class _NulTranscriber:
    """Stands in for a model whose words hold U+0000 (the tiny model's int8 kernels decode one on
    some CPUs; byte-level BPE can in any model): clip_00000 through the constructors, clip_00001
    also with a NUL put in after they made it safe, which only the database can still refuse."""

    model_name = "nul-words"

    device = CPU

    def __init__(self, _options: LoadOptions) -> None:
        pass

    def transcribe(self, audio: Any, _options: DecodeOptions, *, archive: str, member: str) -> Transcript:
        words = [Word(0.0, 0.5, " good", 0.9), Word(0.5, 1.0, " words", 0.9)]
        if "clip_00000" in member or "clip_00001" in member:
            words[0] = Word(0.0, 0.5, " go\x00od\x1b", 0.9)
        if "clip_00001" in member:
            words[1].word = " wor\x00ds"  # past the sanitiser, on purpose
        segment = Segment(0.0, 1.0, "good words", words=words)
        return Transcript.of(
            [segment], archive=archive, member=member, model=self.model_name,
            language="en", language_probability=1.0, duration=len(audio) / 16000,
        )  # fmt: skip


def test_nul_in_one_members_words_fails_that_member_alone(tmp_path: Path, pg_dsn: str) -> None:
    (archive,) = make_day(tmp_path, ["12_30"], members=5)
    store = ProgressStore(pg_dsn)
    store.init_schema()
    config = PipelineConfig(
        dsn=pg_dsn, remote=str(tmp_path / "remote"), scratch_dir=tmp_path / "scratch", num_workers=1,
        stream_batch_size=5, timestamps="word",
        speakers=False,  # attributing speakers makes new words, which the sanitiser would clean
    )  # fmt: skip
    result = ArchiveWorker(
        config, day=dt.date.fromisoformat(DAY), archive_path=archive, slot="12_30", store=store,
        transcriber_factory=_NulTranscriber,
    ).run()  # fmt: skip
    store.close()

    statuses = _statuses(pg_dsn)
    bad = next(m for m in statuses if "clip_00001" in m)
    assert statuses.pop(bad)[0] == "failed"
    assert {s for s, _ in statuses.values()} == {"done"}, statuses
    assert result.state == "done" and (result.done, result.failed) == (4, 1)
    (row,) = query(pg_dsn, "SELECT error FROM audio_files WHERE member = %s", bad)
    assert row["error"].startswith("its transcript could not be recorded")
    remote = tmp_path / "remote" / DAY / "12_30"
    sidecars = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*.json"))
    assert len(sidecars) == 4 and not any("clip_00001" in p for p in sidecars)
    assert not any("clip_00001" in p.name for p in remote.rglob("*"))  # nothing of it uploaded
    first = next(remote.rglob("clip_00000*.json"))
    words = [w["word"] for s in json.loads(first.read_text())["segments"] for w in s["words"]]
    assert words == [" good", " words"]  # made safe where it was made: recorded and uploaded

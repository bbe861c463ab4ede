"""`streaming-pipeline bench`: the streaming pipeline against the flow it replaces, on one input.

Every variant runs in this invocation on the same archive, with the same model instance and the
same decoding options, so their ratios are meaningful on whatever machine runs it:

    sequential       extract the whole archive to disk, then convert all, then transcribe file by
                     file, then upload all (the old flow; no database writes, so it is favoured)
    streaming        ArchiveWorker, as `process-tar` runs it (progress in PostgreSQL), with the
                     configured decoder (`--decoder`, batched by default)
    transcribe_only  that decoder alone over converted audio already in memory: the floor
    per_member       faster-whisper's own transcribe, member by member (`--transcribe-workers` at
                     once) over the same audio: the path the batched decoder replaces
    timestamps_*     the decoder alone with `--timestamps none`, `segment` and `word`: what time in
                     the transcripts costs (measure it with a real model: a random one decodes
                     differently with and without timestamp tokens)
    conversion       in-process soundfile + soxr against `sox`, one process per file

On CUDA, GPU utilisation and memory are sampled through NVML (`nvidia-ml-py`) while the streaming
run and the decoder alone run. Peak memory and scratch are measured on separate `process-tar`
processes over N and over 4x N members, sampled from /proc every 20 ms (process tree RSS, bytes
under the scratch dir).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PipelineConfig, config_env
from ..errors import ConfigError, ConversionError, PipelineError, TranscriptionError
from ..run.gpu import GpuSampler
from ..run.retranscribe import RetranscribeWorker
from ..run.worker import ArchiveWorker
from ..stages.archive import ArchiveReader, Member
from ..stages.asr.factory import decode_all, open_decoder
from ..stages.asr.options import DecodeOptions
from ..stages.asr.policy import TIMESTAMP_MODES
from ..stages.asr.protocol import DecoderStats, TranscriberLike
from ..stages.audio import AudioInfo, conversion_pool, convert_to_flac, load_16k
from ..stages.cpu import DECODING, STARTUP
from ..stages.upload import AsyncRsyncStorageManager, Destination, UploadState
from ..state.records import ArchiveKey
from ..state.store import ProgressStore

log = logging.getLogger(__name__)

DAY = dt.date(2000, 1, 1)  # bench rows live under this day in the progress database
SAMPLE_INTERVAL_S = 0.02

# The feed ceiling's model: random weights of the smallest size that runs Whisper's code path
# (80 mels, 1500 encoder positions), decoding one token a window. On the real recordings its
# CTranslate2 threads took 9.7 CPU seconds per audio hour (the test model, d_model 32: 21.6).
FEED_MODEL = {"d_model": 8, "heads": 1, "layers": 1}
GPU_SAMPLE_INTERVAL_S = 0.1  # NVML's utilisation is averaged over its own sample period

# (key, limit, "max" or "min", description, devices it applies to). The CPU ones are the first
# benchmark's, for 2 cores and the tiny model; the CUDA ones the batched decoder's, for a GPU node
# with a large-v2/v3-sized model.
TARGETS = (
    ("ratio_streaming_sequential", 0.70, "max", "streaming wall <= 0.7 x sequential", ("cpu",)),
    ("ratio_streaming_transcribe_only", 1.25, "max", "streaming wall <= 1.25 x decoder alone", ("cpu",)),
    (
        "ratio_streaming_transcribe_only_throughput",
        0.90,
        "min",
        "streaming audio s/s >= 0.9 x decoder alone",
        ("cuda",),
    ),
    ("ratio_streaming_per_member_throughput", 4.0, "min", "streaming audio s/s >= 4 x per-member", ("cuda",)),
    ("gpu_busy_streaming", 0.85, "min", "GPU busy >= 85% while streaming", ("cuda",)),
    # `segment` is timed by aligned words as `word` is (issue 35), so it costs what `word` does
    ("ratio_timestamps_segment_none", 1.35, "max", "decoder wall, segment <= 1.35 x none", ("cpu",)),
    ("ratio_timestamps_word_none", 1.35, "max", "decoder wall, word <= 1.35 x none", ("cpu",)),
    ("ratio_pss_large_small", 1.15, "max", "peak PSS on k x N members <= 1.15 x on N", ("cpu", "cuda")),
    ("scratch_peak_batches", 2.0, "max", "scratch peak <= 2 stream batches", ("cpu", "cuda")),
    # issue 26's, for the real recordings on 2 cores: the CPU side feeds >= 150x realtime, and a
    # second core adds >= 0.7 of the first's rate
    ("feed_ceiling", 150.0, "min", "feed ceiling >= 150x realtime", ("cpu", "cuda")),
    ("ratio_feed_cores", 1.7, "min", "feed ceiling on all cores >= 1.7 x on one", ("cpu", "cuda")),
)


@dataclass(frozen=True)
class BenchPlan:
    work_dir: Path
    members: int = 48
    archive: Path | None = None
    large_factor: int = 4
    # Copies of every member for the feed ceiling: an archive long enough that a run's start-up
    # (conversion processes, the first batch's way through the stages) weighs little on it.
    feed_factor: int = 16
    database_server: int | None = None  # the embedded PostgreSQL's postmaster: pinned with the feed
    repeat: int = 3
    json_path: Path | None = None
    gpu_rate: float = 300.0  # x realtime of the GPU the feed ceiling sizes a node for
    feed_only: bool = False  # only the feed ceiling
    feed_model: Path | None = None  # decoded one token a window: a FEED_MODEL-sized random Whisper


@dataclass
class Run:
    """One timed variant: wall seconds, audio seconds it produced, busy seconds per stage."""

    wall_s: float
    audio_s: float
    stages: dict[str, float] = field(default_factory=dict)
    gpu: dict[str, float] | None = None  # NVML: mean busy share, peak memory (CUDA only)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by stage (flow.split_cpu)
    progress: list[tuple[float, float]] = field(default_factory=list)  # (s since start, audio s done)

    @property
    def audio_per_wall(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def audio_per_wall_once_full(self) -> float | None:
        return rate_once_full(self.progress)


def rate_once_full(progress: Sequence[tuple[float, float]]) -> float | None:
    """Audio seconds per wall second from the first batch done to the last: the run's pace once
    every stage has work, its start-up (processes, the first batch's way through) left out, its
    tail kept. None with fewer than two batches done."""
    if len(progress) < 2 or progress[-1][0] <= progress[0][0]:
        return None
    (t0, a0), (t1, a1) = progress[0], progress[-1]
    return (a1 - a0) / (t1 - t0)


@dataclass(frozen=True)
class FeedCeiling:
    """The pipeline with decoding made nearly free (one token a window), on `cores` cores: how
    fast the CPU side can feed a GPU, and what each stage costs."""

    cores: int
    run: Run  # the median round (by wall time)
    once_full: float | None = None  # the rounds' median rate_once_full

    @property
    def cpu_s_per_audio_hour(self) -> dict[str, float]:
        """What each stage costs per hour of audio; the conversion processes' start-up is paid
        once a run, not per hour (`startup_cpu_s`)."""
        return {k: v * 3600 / self.run.audio_s for k, v in self.run.cpu.items() if k != STARTUP}

    @property
    def startup_cpu_s(self) -> float:
        return self.run.cpu.get(STARTUP, 0.0)

    @property
    def busy_cores(self) -> float:
        return sum(self.run.cpu.values()) / self.run.wall_s

    def cores_for(self, gpu_rate: float) -> float:
        """Cores that keep a GPU decoding `gpu_rate` x realtime fed: the feed's CPU seconds per
        audio second times the rate. CTranslate2's compute threads are left out (a GPU does that
        work); the decode thread's own packing and bookkeeping stay in (`rest`)."""
        per_hour = self.cpu_s_per_audio_hour
        return gpu_rate * (sum(per_hour.values()) - per_hour.get(DECODING, 0.0)) / 3600

    def as_json(self, gpu_rate: float) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "wall_s": self.run.wall_s,
            "audio_s": self.run.audio_s,
            "audio_s_per_wall_s": self.run.audio_per_wall,
            "audio_s_per_wall_s_once_full": self.once_full,
            "busy_cores": self.busy_cores,
            "cpu_s_per_audio_hour": self.cpu_s_per_audio_hour,
            "startup_cpu_s": self.startup_cpu_s,
            "cores_for_gpu_rate": self.cores_for(gpu_rate),
        }


@dataclass
class ProcessPeak:
    wall_s: float
    returncode: int
    # The process tree's summed PSS (main process + conversion pool + rsync): a page shared by
    # processes counts once, split among them. Summed RSS counts the main process twice while
    # it has a forked child (rsync), so its peak grew with a run's length; it is kept for reference.
    peak_pss_mb: float
    peak_main_pss_mb: float
    peak_rss_mb: float
    peak_main_rss_mb: float  # the main process's high-water mark (VmHWM)
    peak_scratch_bytes: int


# -- inputs -------------------------------------------------------------------------------------
def synthetic_archive(path: Path, members: int) -> Path:
    from .samples import clip_files, write_tar_xz

    return write_tar_xz(path, clip_files(members))


def repeat_archive(source: Path, target: Path, times: int) -> Path:
    """`times` copies of every member of `source`, under copy-K/ folders, streamed member by member."""
    tmp = target.with_name(target.name + ".part")
    with tarfile.open(tmp, "w:xz", preset=1) as out:
        for k in range(times):
            with tarfile.open(source, "r|xz") as src:
                for info in src:
                    if not info.isreg():
                        continue
                    data = src.extractfile(info)
                    info.name = f"copy-{k}/{info.name}"
                    out.addfile(info, data)
                    src.members = []
    tmp.replace(target)
    return target


def largest_batch_bytes(archive: Path, batch_size: int) -> int:
    """Bytes the reader extracts for its largest batch: the unit of the scratch target."""
    sizes: list[int] = []
    with tarfile.open(archive, "r|xz") as tar:
        for info in tar:
            if info.isreg():
                sizes.append(info.size)
            tar.members = []
    return max((sum(sizes[i : i + batch_size]) for i in range(0, len(sizes), batch_size)), default=0)


# -- variants -----------------------------------------------------------------------------------
def run_sequential(config: PipelineConfig, archive: Path, work: Path, transcriber: TranscriberLike) -> Run:
    """The flow the pipeline replaces: each stage over the whole archive before the next starts."""
    shutil.rmtree(work, ignore_errors=True)
    destination = Destination.parse(str(work / "remote"))
    destination.prepare()
    stage = work / "stage"
    stages: dict[str, float] = {}
    started = time.monotonic()

    t = time.monotonic()
    reader = ArchiveReader(
        archive, work / "extract", batch_size=config.max_members, max_member_bytes=config.max_member_bytes
    )
    members = [m for batch in reader.batches() for m in batch.members]
    stages["extract"] = time.monotonic() - t

    t = time.monotonic()
    converted: list[tuple[Member, Path, AudioInfo]] = []
    with conversion_pool(config.num_workers) as pool:
        outputs = [stage / f"{m.output_stem}.flac" for m in members]
        futures = [
            pool.submit(convert_to_flac, str(m.path), str(out))
            for m, out in zip(members, outputs, strict=True)
        ]
        for member, out, fut in zip(members, outputs, futures, strict=True):
            try:
                converted.append((member, out, fut.result()))
            except ConversionError as exc:
                log.warning("sequential: %s failed: %s", member.name, exc)
    stages["convert"] = time.monotonic() - t

    t = time.monotonic()
    audio_s = 0.0
    for member, out, info in converted:
        try:
            result = transcriber.transcribe(load_16k(out), archive=archive.name, member=member.name)
        except TranscriptionError as exc:
            log.warning("sequential: %s failed: %s", member.name, exc)
            continue
        result = replace(result, source=info.source())
        out.with_suffix(".json").write_text(json.dumps(result.as_json(), ensure_ascii=False, indent=1))
        audio_s += info.output_duration_s
    stages["transcribe"] = time.monotonic() - t

    t = time.monotonic()
    uploader = AsyncRsyncStorageManager.from_config(config, destination, max_concurrent=1)
    job = uploader.submit(stage, label="sequential: all files", on_finish=lambda _job: None)
    uploader.wait()
    uploader.close()
    if job.state is not UploadState.DONE:
        raise PipelineError(f"sequential upload failed: {job.error}")
    stages["upload"] = time.monotonic() - t
    return Run(time.monotonic() - started, audio_s, stages)


def run_transcribe_only(
    audio: Sequence[np.ndarray],
    transcriber: TranscriberLike,
    config: PipelineConfig,
    gpu: GpuSampler,
    transcripts: Path | None = None,
) -> Run:
    """The configured decoder alone (`config.decoder`), as the pipeline calls it; with
    `transcripts`, the texts go to that JSON file (the tests compare them with the pipeline's)."""
    names = [f"{i:06d}" for i in range(len(audio))]
    decoder = open_decoder(transcriber, DecodeOptions.of(config))
    try:
        with gpu.sampling() as figures:
            started = time.monotonic()
            results = decode_all(decoder, list(audio), names)
            wall = time.monotonic() - started
        stats = decoder.stats()
    finally:
        decoder.close()
    if transcripts is not None:
        transcripts.write_text(json.dumps([r.text for r in results], ensure_ascii=False))
    return Run(
        wall, sum(len(a) for a in audio) / 16000, {"transcribe": wall, **_decoder_figures(stats)}, figures
    )


def _decoder_figures(stats: DecoderStats) -> dict[str, float]:
    figures = {f"decoder_{k}": float(v) for k, v in stats.as_dict().items() if k != "decoder_busy_s"}
    if stats.calls:
        figures["decoder_rows_per_call"] = stats.rows_decoded / stats.calls
    return figures


def run_streaming(
    config: PipelineConfig, archive: Path, work: Path, transcriber: TranscriberLike, dsn: str, gpu: GpuSampler
) -> Run:
    shutil.rmtree(work, ignore_errors=True)
    config = replace(config, remote=str(work / "remote"), scratch_dir=work / "scratch")

    def worker(store: ProgressStore) -> ArchiveWorker:
        store.archives.forget(ArchiveKey.of(DAY, archive, "bench").archive)
        return ArchiveWorker(
            config,
            day=DAY,
            archive_path=archive,
            slot="bench",
            store=store,
            transcriber_factory=lambda _config: transcriber,
        )

    result, figures = _sampled(worker, dsn, gpu)
    if not result.ok or result.failed:
        raise PipelineError(f"streaming run did not finish cleanly: {result.summary_line()}")
    return Run(
        result.wall_s,
        result.run_audio_s,
        dict(result.stage_seconds),
        figures,
        result.stage_cpu_s,
        result.progress,
    )


def _sampled(
    worker: Callable[[ProgressStore], Any], dsn: str, gpu: GpuSampler
) -> tuple[Any, dict[str, float]]:
    """Run the worker `worker(store)` makes on its own store, with the GPU sampled meanwhile."""
    store = ProgressStore(dsn)
    try:
        with gpu.sampling() as figures:
            return worker(store).run(), figures
    finally:
        store.close()


@contextlib.contextmanager
def pinned(cores: set[int], server: int | None = None) -> Iterator[None]:
    """Every thread of this process on `cores` (threads and processes started inside inherit it),
    and of `server` (the embedded PostgreSQL's postmaster) and its children: on one core the
    database would otherwise run on another for free, which it cannot on all of them."""
    tids = _threads(os.getpid()) + [t for pid in with_children(server) for t in _threads(pid)]
    before: dict[int, set[int]] = {}
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cores)
    try:
        yield
    finally:
        for tid, mask in before.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(tid, mask)


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # it ended meanwhile
        return []


def with_children(pid: int | None) -> list[int]:
    """`pid` and its children (PostgreSQL's server processes: backends fork from the postmaster,
    so those a run connects later inherit its affinity)."""
    if pid is None:
        return []
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            children.append(int(entry))
    return [pid, *children]


def feed_config(config: PipelineConfig, model: Path, cores: int) -> PipelineConfig:
    """The run that measures the feed: one decoded token a window, greedy, one window a call (on
    a CPU a call of 8 windows costs more per window than 8 of one: the stand-in for the GPU is
    cheapest so), a conversion process and a preparing thread per core; the rest as configured."""
    return replace(
        config,
        model=str(model),
        max_new_tokens=1,
        temperatures="0",
        decode_batch_size=1,
        num_workers=cores,
        transcribe_workers=cores,
        cpu_threads=1,
    )


def run_feed_ceiling(
    config: PipelineConfig,
    archive: Path,
    work: Path,
    transcriber_factory: Callable[[PipelineConfig], TranscriberLike],
    model: Path,
    core_counts: Sequence[int],
    repeat: int,
    database_server: int | None = None,
) -> list[FeedCeiling]:
    """The streaming run with decoding nearly free, pinned to 1, 2, ... cores; the median of
    `repeat` rounds per count, the counts interleaved so that a machine's drift hits them alike."""
    available = sorted(os.sched_getaffinity(0))
    transcriber = transcriber_factory(feed_config(config, model, 1))
    runs: dict[int, list[Run]] = {n: [] for n in core_counts}
    for round_number in range(repeat):
        for n in core_counts:
            log.info("round %d of %d: feed ceiling on %d core(s)", round_number + 1, repeat, n)
            with pinned(set(available[:n]), database_server):
                runs[n].append(
                    run_streaming(
                        feed_config(config, model, n), archive, work / "feed", transcriber, config.dsn,
                        GpuSampler("cpu", GPU_SAMPLE_INTERVAL_S),
                    )
                )  # fmt: skip
    return [FeedCeiling(n, _median_run(runs[n]), _median_rate_once_full(runs[n])) for n in core_counts]


def _median_rate_once_full(runs: Sequence[Run]) -> float | None:
    rates = sorted(r for r in (run.audio_per_wall_once_full for run in runs) if r is not None)
    return rates[len(rates) // 2] if rates else None


def _feed_report(ceilings: Sequence[FeedCeiling], gpu_rate: float, copies: int) -> dict[str, Any]:
    widest = ceilings[-1]
    report: dict[str, Any] = {
        "gpu_rate": gpu_rate,
        "copies": copies,  # of every member of the archive
        "audio_s": widest.run.audio_s,
        "runs": [c.as_json(gpu_rate) for c in ceilings],
        "feed_ceiling": widest.run.audio_per_wall,
        "feed_ceiling_once_full": widest.once_full,
        "feed_cores": widest.cores,
        "cpu_s_per_audio_hour": widest.cpu_s_per_audio_hour,
        "cores_for_gpu_rate": widest.cores_for(gpu_rate),
    }
    if len(ceilings) > 1:
        report["ratio_feed_cores"] = widest.run.audio_per_wall / ceilings[0].run.audio_per_wall
    return report


def run_retranscribe(
    config: PipelineConfig, archive: Path, work: Path, transcriber: TranscriberLike, dsn: str, gpu: GpuSampler
) -> Run:
    """The streaming run's members (its destination, `work`) made again from their FLACs by the
    same model. Only `--max-new-tokens` differs: 440 (the model's own limit) against unset, which
    makes every transcript stale without changing what is decoded."""
    config = replace(
        config,
        remote=str(work / "remote"),
        scratch_dir=work / "scratch",
        max_new_tokens=None if config.max_new_tokens is not None else 440,
    )

    def worker(store: ProgressStore) -> RetranscribeWorker:
        return RetranscribeWorker(
            config,
            key=ArchiveKey.of(DAY, archive, "bench"),
            path=str(archive),
            store=store,
            transcriber_factory=lambda _config: transcriber,
        )

    result, figures = _sampled(worker, dsn, gpu)
    if not result.ok or not result.counts.get("done"):
        raise PipelineError(f"re-transcription did not finish cleanly: {result.summary_line()}")
    return Run(result.wall_s, result.audio_s, result.stage_seconds, figures)


def compare_conversion(sources: Sequence[Path], work: Path) -> dict[str, Any]:
    """soundfile + soxr in this process against one `sox` process per file, both on one core."""
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    for i, src in enumerate(sources):
        try:
            convert_to_flac(str(src), str(work / "python" / f"{i:06d}.flac"))
        except ConversionError as exc:
            log.warning("conversion: %s failed: %s", src.name, exc)
    in_process = time.monotonic() - started
    report: dict[str, Any] = {"files": len(sources), "in_process_wall_s": in_process}
    sox = shutil.which("sox")
    if sox is None:
        report["sox_wall_s"] = None
        report["note"] = "sox is not installed"
        return report
    (work / "sox").mkdir(parents=True, exist_ok=True)
    failures = 0
    started = time.monotonic()
    for i, src in enumerate(sources):
        out = work / "sox" / f"{i:06d}.flac"
        cmd = [sox, "-q", str(src), "-b", "16", str(out), "channels", "1", "rate", "-h", "16000"]
        failures += subprocess.run(cmd, capture_output=True, check=False).returncode != 0
    report["sox_wall_s"] = time.monotonic() - started
    report["sox_failures"] = failures
    report["ratio_in_process_sox"] = in_process / report["sox_wall_s"]
    return report


# -- process measurements ------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid is the 2nd field after ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """A process's proportional set size (`smaps_rollup`, Linux 4.14+); its RSS where the kernel
    has no rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return _status_kb(pid, "VmRSS")


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def measure_process(argv: Sequence[str], env: dict[str, str], scratch: Path, log_path: Path) -> ProcessPeak:
    """Run `argv`, sampling its process tree's PSS and RSS and the bytes under `scratch` until it
    exits."""
    peak_pss = peak_main_pss = peak_rss = peak_main = peak_scratch = 0
    started = time.monotonic()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            pids = [proc.pid, *_children(proc.pid)]
            main_pss = _pss_kb(proc.pid)
            peak_main_pss = max(peak_main_pss, main_pss)
            peak_pss = max(peak_pss, main_pss + sum(_pss_kb(p) for p in pids[1:]))
            peak_rss = max(peak_rss, sum(_status_kb(p, "VmRSS") for p in pids))
            peak_main = max(peak_main, _status_kb(proc.pid, "VmHWM"))
            peak_scratch = max(peak_scratch, _tree_size(scratch))
            time.sleep(SAMPLE_INTERVAL_S)
    return ProcessPeak(
        wall_s=time.monotonic() - started,
        returncode=proc.returncode,
        peak_pss_mb=peak_pss / 1024,
        peak_main_pss_mb=peak_main_pss / 1024,
        peak_rss_mb=peak_rss / 1024,
        peak_main_rss_mb=peak_main / 1024,
        peak_scratch_bytes=peak_scratch,
    )


def run_process_tar(config: PipelineConfig, archive: Path, work: Path, dsn: str) -> ProcessPeak:
    """`process-tar` in a fresh interpreter, as a worker job runs it."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = config.with_settings(dsn=dsn, remote=str(work / "remote"), scratch_dir=work / "scratch")
    store = ProgressStore(dsn)
    try:
        store.archives.forget(ArchiveKey.of(DAY, archive, "bench").archive)
    finally:
        store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")} | config_env(config)
    argv = [sys.executable, "-m", "streaming_pipeline", "process-tar", DAY.isoformat(), str(archive), "bench"]
    peak = measure_process(argv, env, config.scratch_dir, work / "process-tar.log")
    if peak.returncode != 0:
        raise ConfigError(
            f"process-tar on {archive.name} exited {peak.returncode}; see {work / 'process-tar.log'}"
        )
    return peak


# -- the whole benchmark -------------------------------------------------------------------------
def _copies(small: Path, inputs: Path, factor: int) -> Path:
    """`small` with every member `factor` times (written once, again when `small` changed)."""
    large = inputs / f"{small.name.removesuffix('.tar.xz')}-x{factor}.tar.xz"
    if not large.exists() or large.stat().st_mtime < small.stat().st_mtime:
        log.info("writing %s (%d copies of every member)", large.name, factor)
        repeat_archive(small, large, factor)
    return large


def run_bench(
    config: PipelineConfig, plan: BenchPlan, transcriber_factory: Callable[[PipelineConfig], TranscriberLike]
) -> dict[str, Any]:
    work = plan.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    inputs = work / "inputs"
    inputs.mkdir(exist_ok=True)
    if plan.archive is not None:
        small = plan.archive.resolve()
        if not small.is_file():
            raise ConfigError(f"archive {plan.archive} does not exist")
    else:
        small = inputs / f"synthetic-{plan.members}.tar.xz"
        if not small.exists():
            log.info("writing a synthetic archive of %d members", plan.members)
            synthetic_archive(small, plan.members)
    feed: dict[str, Any] | None = None
    if plan.feed_model is not None:
        available = len(os.sched_getaffinity(0))
        ceilings = run_feed_ceiling(
            config, _copies(small, inputs, plan.feed_factor), work, transcriber_factory, plan.feed_model,
            sorted({1, available}), plan.repeat, plan.database_server,
        )  # fmt: skip
        feed = _feed_report(ceilings, plan.gpu_rate, plan.feed_factor)
    if plan.feed_only:
        assert feed is not None, "the feed ceiling needs a model to decode with"
        report = {"machine": _machine(), "archive": small.name, "repeat": plan.repeat, "feed": feed}
        _write_json(plan, report)
        return report

    large = _copies(small, inputs, plan.large_factor)
    transcriber = transcriber_factory(config)
    gpu = GpuSampler(getattr(getattr(transcriber, "device", None), "device", "cpu"), GPU_SAMPLE_INTERVAL_S)
    per_member_config = replace(config, decoder="per-member")
    sequential: list[Run] = []
    streaming: list[Run] = []
    alone: list[Run] = []
    per_member: list[Run] = []
    retranscribed: list[Run] = []
    timed: dict[str, list[Run]] = {f"timestamps_{mode}": [] for mode in TIMESTAMP_MODES}
    for round_number in range(plan.repeat):
        log.info("round %d of %d: sequential", round_number + 1, plan.repeat)
        sequential.append(run_sequential(config, small, work / "sequential", transcriber))
        audio = [load_16k(p) for p in sorted((work / "sequential" / "stage").rglob("*.flac"))]
        log.info(
            "round %d of %d: %s decoder alone",
            round_number + 1,
            plan.repeat,
            DecodeOptions.of(config).decoder,
        )
        alone.append(run_transcribe_only(audio, transcriber, config, gpu, work / "transcribe-only.json"))
        log.info("round %d of %d: per-member decoder alone", round_number + 1, plan.repeat)
        per_member.append(run_transcribe_only(audio, transcriber, per_member_config, gpu))
        for mode in TIMESTAMP_MODES:
            if mode == config.timestamps:  # the decoder-alone run above
                timed[f"timestamps_{mode}"].append(alone[-1])
                continue
            log.info("round %d of %d: decoder alone, --timestamps %s", round_number + 1, plan.repeat, mode)
            timed[f"timestamps_{mode}"].append(
                run_transcribe_only(audio, transcriber, replace(config, timestamps=mode), gpu)
            )
        del audio
        log.info("round %d of %d: streaming", round_number + 1, plan.repeat)
        streaming.append(run_streaming(config, small, work / "streaming", transcriber, config.dsn, gpu))
        log.info("round %d of %d: re-transcription from the FLACs", round_number + 1, plan.repeat)
        retranscribed.append(
            run_retranscribe(config, small, work / "streaming", transcriber, config.dsn, gpu)
        )
    sources = sorted((work / "sequential" / "extract").rglob("*"))
    conversion = compare_conversion([p for p in sources if p.is_file()], work / "conversion")
    shutil.rmtree(work / "sequential" / "extract", ignore_errors=True)

    log.info("process-tar on %s and on %s, sampling memory and scratch", small.name, large.name)
    peak_small = run_process_tar(config, small, work / "process-small", config.dsn)
    peak_large = run_process_tar(config, large, work / "process-large", config.dsn)
    batch_bytes = largest_batch_bytes(large, config.stream_batch_size)
    device = getattr(getattr(transcriber, "device", None), "device", "cpu")
    report = _report(
        config,
        plan,
        small,
        device,
        {
            "sequential": sequential,
            "streaming": streaming,
            "transcribe_only": alone,
            "per_member": per_member,
            "retranscribe": retranscribed,
            **timed,
        },
        conversion,
        (peak_small, peak_large),
        batch_bytes,
        feed,
    )
    _write_json(plan, report)
    return report


def _write_json(plan: BenchPlan, report: dict[str, Any]) -> None:
    if plan.json_path is not None:
        plan.json_path.parent.mkdir(parents=True, exist_ok=True)
        plan.json_path.write_text(json.dumps(report, indent=2) + "\n")


def _median_run(runs: Sequence[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.wall_s)
    return ordered[len(ordered) // 2]


def _report(
    config: PipelineConfig,
    plan: BenchPlan,
    archive: Path,
    device: str,
    runs: dict[str, Sequence[Run]],
    conversion: dict[str, Any],
    peaks: tuple[ProcessPeak, ProcessPeak],
    batch_bytes: int,
    feed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    median = {name: _median_run(variant) for name, variant in runs.items()}
    seq, stream, floor, per_member = (
        median[k] for k in ("sequential", "streaming", "transcribe_only", "per_member")
    )
    timed_wall = {mode: median[f"timestamps_{mode}"].wall_s for mode in TIMESTAMP_MODES}
    peak_small, peak_large = peaks
    peak_scratch = max(peak_small.peak_scratch_bytes, peak_large.peak_scratch_bytes)
    report: dict[str, Any] = {
        "machine": _machine(),
        "device": device,
        "model": Path(config.model).name,
        "settings": {
            "device": config.device,
            "compute_type": config.compute_type,
            "decoder": DecodeOptions.of(config).decoder,
            "decode_batch_size": config.decode_batch_size,
            "process_batch_size": config.process_batch_size,
            "max_new_tokens": config.max_new_tokens,
            "beam_size": config.beam_size,
            "temperatures": config.temperatures,
            "vad": config.vad,
            "timestamps": config.timestamps,
            "stream_batch_size": config.stream_batch_size,
            "num_workers": config.num_workers,
            "cpu_threads": config.cpu_threads,
            "transcribe_workers": config.transcribe_workers,
            "max_concurrent_uploads": config.max_concurrent_uploads,
        },
        "archive": archive.name,
        "archive_bytes": archive.stat().st_size,
        "members": plan.members if plan.archive is None else None,
        "large_factor": plan.large_factor,
        "feed_factor": plan.feed_factor,
        "repeat": plan.repeat,
        "audio_s": stream.audio_s,
        "all_wall_s": {name: [r.wall_s for r in variant] for name, variant in runs.items()},
        "stage_busy_s": {
            "sequential": seq.stages,
            "streaming": stream.stages,
            "transcribe_only": floor.stages,
            "per_member": per_member.stages,
            **{f"timestamps_{m}": median[f"timestamps_{m}"].stages for m in TIMESTAMP_MODES},
        },
        "gpu": {name: run.gpu for name, run in median.items() if run.gpu},
        "ratio_streaming_sequential": stream.wall_s / seq.wall_s,
        "ratio_streaming_transcribe_only": stream.wall_s / floor.wall_s,
        "ratio_streaming_transcribe_only_throughput": stream.audio_per_wall / floor.audio_per_wall,
        "ratio_streaming_per_member_throughput": stream.audio_per_wall / per_member.audio_per_wall,
        "ratio_transcribe_only_per_member_throughput": floor.audio_per_wall / per_member.audio_per_wall,
        "ratio_retranscribe_streaming": median["retranscribe"].wall_s / stream.wall_s,
        "ratio_timestamps_segment_none": timed_wall["segment"] / timed_wall["none"],
        "ratio_timestamps_word_none": timed_wall["word"] / timed_wall["none"],
        "gpu_busy_streaming": (stream.gpu or {}).get("busy"),
        "conversion": conversion,
        "peak_pss_mb_small": peak_small.peak_pss_mb,
        "peak_pss_mb_large": peak_large.peak_pss_mb,
        "peak_main_pss_mb_small": peak_small.peak_main_pss_mb,
        "peak_main_pss_mb_large": peak_large.peak_main_pss_mb,
        "peak_rss_mb_small": peak_small.peak_rss_mb,
        "peak_rss_mb_large": peak_large.peak_rss_mb,
        "peak_main_rss_mb_small": peak_small.peak_main_rss_mb,
        "peak_main_rss_mb_large": peak_large.peak_main_rss_mb,
        "ratio_pss_large_small": peak_large.peak_pss_mb / peak_small.peak_pss_mb,
        "process_tar_wall_s_small": peak_small.wall_s,
        "process_tar_wall_s_large": peak_large.wall_s,
        "peak_scratch_bytes": peak_scratch,
        "stream_batch_bytes": batch_bytes,
        "scratch_peak_batches": peak_scratch / batch_bytes if batch_bytes else 0.0,
    }
    for name, run in median.items():
        report[f"{name}_wall_s"] = run.wall_s
        report[f"{name}_audio_s"] = run.audio_s
        report[f"{name}_audio_s_per_wall_s"] = run.audio_per_wall
    if feed is not None:
        report["feed"] = feed
        report["feed_ceiling"] = feed["feed_ceiling"]
        report["ratio_feed_cores"] = feed.get("ratio_feed_cores")
    report["targets"] = []
    for key, limit, sense, text, devices in TARGETS:
        value = report.get(key)
        if device not in devices or value is None:
            continue
        met = value <= limit if sense == "max" else value >= limit
        report["targets"].append({"what": text, "value": value, "limit": limit, "met": met})
    return report


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def format_feed(feed: dict[str, Any]) -> list[str]:
    """The feed ceiling's lines: per core count, then each stage's cost and the node's size."""
    lines = [
        f"feed ceiling (decoding nearly free: one token a window; {feed['copies']} copies of every"
        f" member, {feed['audio_s'] / 60:.0f} min of audio):",
        f"{'cores':>7} {'audio s/s':>10} {'once full':>10} {'busy cores':>11}",
    ]
    for run in feed["runs"]:
        full = run["audio_s_per_wall_s_once_full"]
        full_text = f"{full:>10.1f}" if full is not None else f"{'-':>10}"
        lines.append(
            f"{run['cores']:>7} {run['audio_s_per_wall_s']:>10.1f} {full_text} {run['busy_cores']:>11.2f}"
        )
    if "ratio_feed_cores" in feed:
        lines.append(f"{feed['feed_cores']} cores against 1: {feed['ratio_feed_cores']:.2f}x")
    stages = feed["cpu_s_per_audio_hour"]
    lines.append(
        "CPU seconds per audio hour: "
        + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        + f"; total {sum(stages.values()):.1f} (and once a run, conversion start-up "
        + f"{feed['runs'][-1]['startup_cpu_s']:.1f} s)"
    )
    lines.append(
        f"cores to keep a GPU decoding {feed['gpu_rate']:g}x realtime fed: {feed['cores_for_gpu_rate']:.1f}"
    )
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The table `bench` prints."""
    if "audio_s" not in report:  # --feed-only
        return "\n".join([f"{report['archive']}: median of {report['repeat']}", *format_feed(report["feed"])])
    audio = report["audio_s"]
    decoder = report["settings"]["decoder"]
    rows = [
        ("sequential", "sequential (extract, convert, transcribe, upload)"),
        ("streaming", f"streaming pipeline ({decoder} decoder)"),
        ("transcribe_only", f"{decoder} decoder alone (audio in memory)"),
        ("per_member", "per-member decoder alone (faster-whisper transcribe)"),
        ("retranscribe", "re-transcription from the destination's FLACs"),
        *((f"timestamps_{m}", f"{decoder} decoder alone, --timestamps {m}") for m in TIMESTAMP_MODES),
    ]
    lines = [
        f"{report['archive']}: {audio:.0f} s of audio; model {report['model']} on {report['device']}; "
        f"{report['machine']['cores']} cores ({report['machine']['cpu']}); median of {report['repeat']}",
        "",
        f"{'variant':<56} {'wall s':>8} {'audio s/s':>10} {'GPU busy':>9}",
    ]
    for key, name in rows:
        wall = report[f"{key}_wall_s"]
        busy = report["gpu"].get(key, {}).get("busy")
        busy_text = f"{100 * busy:.0f}%" if busy is not None else "-"
        lines.append(f"{name:<56} {wall:>8.2f} {audio / wall:>10.1f} {busy_text:>9}")
    lines.append("")
    for variant, stages in report["stage_busy_s"].items():
        text = ", ".join(f"{k} {v:.2f}" for k, v in sorted(stages.items()))
        lines.append(f"stage seconds, {variant}: {text}")
    conv = report["conversion"]
    if conv.get("sox_wall_s"):
        lines.append(
            f"conversion of {conv['files']} files on one core: in-process {conv['in_process_wall_s']:.2f} s, "
            f"sox per file {conv['sox_wall_s']:.2f} s ({conv['ratio_in_process_sox']:.2f}x)"
        )
    lines.append(
        f"process-tar peak PSS: {report['peak_pss_mb_small']:.0f} MB on N, "
        f"{report['peak_pss_mb_large']:.0f} MB on {report['large_factor']}N "
        f"(main process {report['peak_main_pss_mb_small']:.0f} and "
        f"{report['peak_main_pss_mb_large']:.0f} MB; summed RSS {report['peak_rss_mb_small']:.0f} and "
        f"{report['peak_rss_mb_large']:.0f} MB); "
        f"peak scratch {report['peak_scratch_bytes'] / 1e6:.1f} MB "
        f"(largest stream batch {report['stream_batch_bytes'] / 1e6:.1f} MB)"
    )
    if "feed" in report:
        lines += ["", *format_feed(report["feed"])]
    lines.append("")
    for target in report["targets"]:
        mark = "met" if target["met"] else "MISSED"
        lines.append(f"{mark:>6}  {target['what']}: {target['value']:.2f}")
    return "\n".join(lines)

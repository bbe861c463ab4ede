"""`bench`'s runs: the pipeline (process-tar, streaming, re-transcription), the sequential flow
it replaces, the decoder alone, the feed ceiling and the conversion comparison."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PipelineConfig, config_env
from ..destination import Destination, Rsync
from ..errors import ConfigError, ConversionError, PipelineError, TranscriptionError
from ..run.gpu import GpuSampler
from ..run.retranscribe import RetranscribeWorker
from ..run.worker import ArchiveWorker
from ..stages.archive import ArchiveReader, Member
from ..stages.asr.factory import decode_all, open_decoder
from ..stages.asr.options import DecodeOptions, LoadOptions
from ..stages.asr.protocol import DecoderStats, TranscriberFactory, TranscriberLike
from ..stages.audio import AudioInfo, convert_to_flac, load_16k
from ..stages.cpu import DECODING, STARTUP
from ..stages.pool import ConversionPool
from ..stages.upload import Uploads, UploadState
from ..state.records import ArchiveKey
from ..state.store import ProgressStore
from .bench_memory import GPU_SAMPLE_INTERVAL_S, ProcessPeak, _sampled, measure_process, pinned

log = logging.getLogger(__name__)


DAY = dt.date(2000, 1, 1)  # bench rows live under this day in the progress database

# The feed ceiling's model: random weights of the smallest size that runs Whisper's code path
# (80 mels, 1500 encoder positions), decoding one token a window. On the real recordings its
# CTranslate2 threads took 9.7 CPU seconds per audio hour (the test model, d_model 32: 21.6).
FEED_MODEL = {"d_model": 8, "heads": 1, "layers": 1}


@dataclass
class Run:
    """One timed variant: wall seconds, audio seconds it produced, busy seconds per stage."""

    wall_s: float
    audio_s: float
    stages: dict[str, float] = field(default_factory=dict)
    gpu: dict[str, float] | None = None  # NVML: mean busy share, peak memory (CUDA only)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by stage (stages/cpu.split_cpu)
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
                    src.members = []  # type: ignore[attr-defined]  # tarfile's header cache, not in its stubs
    tmp.replace(target)
    return target


def largest_batch_bytes(archive: Path, batch_size: int) -> int:
    """Bytes the reader extracts for its largest batch: the unit of the scratch target."""
    sizes: list[int] = []
    with tarfile.open(archive, "r|xz") as tar:
        for info in tar:
            if info.isreg():
                sizes.append(info.size)
            tar.members = []  # type: ignore[attr-defined]  # tarfile's header cache, not in its stubs
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
    pool = ConversionPool(config.num_workers, timeout=config.decode_timeout)  # the pipeline's own
    try:
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
    finally:
        pool.close()
    stages["convert"] = time.monotonic() - t

    t = time.monotonic()
    audio_s = 0.0
    options = DecodeOptions.of(config.decode)
    for member, out, info in converted:
        try:
            result = transcriber.transcribe(load_16k(out), options, archive=archive.name, member=member.name)
        except TranscriptionError as exc:
            log.warning("sequential: %s failed: %s", member.name, exc)
            continue
        result = replace(result, source=info.source())
        out.with_suffix(".json").write_text(json.dumps(result.as_json(), ensure_ascii=False, indent=1))
        audio_s += info.output_duration_s
    stages["transcribe"] = time.monotonic() - t

    t = time.monotonic()
    rsync = Rsync(destination, timeout=config.upload_timeout, retries=config.upload_retries)
    uploader = Uploads(rsync, max_concurrent=1)
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
    decoder = open_decoder(transcriber, DecodeOptions.of(config.decode))
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
    transcriber_factory: TranscriberFactory,
    model: Path,
    core_counts: Sequence[int],
    repeat: int,
    database_server: int | None = None,
) -> list[FeedCeiling]:
    """The streaming run with decoding nearly free, pinned to 1, 2, ... cores; the median of
    `repeat` rounds per count, the counts interleaved so that a machine's drift hits them alike."""
    available = sorted(os.sched_getaffinity(0))
    transcriber = transcriber_factory(LoadOptions.of(feed_config(config, model, 1).decode))
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
    return [FeedCeiling(n, median_run(runs[n]), _median_rate_once_full(runs[n])) for n in core_counts]


def _median_rate_once_full(runs: Sequence[Run]) -> float | None:
    rates = sorted(r for r in (run.audio_per_wall_once_full for run in runs) if r is not None)
    return rates[len(rates) // 2] if rates else None


def feed_report(ceilings: Sequence[FeedCeiling], gpu_rate: float, copies: int) -> dict[str, Any]:
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
def copies_of(small: Path, inputs: Path, factor: int) -> Path:
    """`small` with every member `factor` times (written once, again when `small` changed)."""
    large = inputs / f"{small.name.removesuffix('.tar.xz')}-x{factor}.tar.xz"
    if not large.exists() or large.stat().st_mtime < small.stat().st_mtime:
        log.info("writing %s (%d copies of every member)", large.name, factor)
        repeat_archive(small, large, factor)
    return large


def median_run(runs: Sequence[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.wall_s)
    return ordered[len(ordered) // 2]

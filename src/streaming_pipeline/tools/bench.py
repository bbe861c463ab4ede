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

import json
import logging
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import PipelineConfig, Timestamps
from ..errors import ConfigError
from ..run.gpu import GpuSampler
from ..stages.asr.options import DecodeOptions, LoadOptions
from ..stages.asr.protocol import TranscriberFactory, TranscriberLike
from ..stages.audio import load_16k
from .bench_memory import GPU_SAMPLE_INTERVAL_S, ProcessPeak
from .bench_runs import (
    Run,
    compare_conversion,
    copies_of,
    feed_report,
    largest_batch_bytes,
    median_run,
    run_feed_ceiling,
    run_process_tar,
    run_retranscribe,
    run_sequential,
    run_streaming,
    run_transcribe_only,
    synthetic_archive,
)

log = logging.getLogger(__name__)

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


def run_bench(
    config: PipelineConfig, plan: BenchPlan, transcriber_factory: TranscriberFactory
) -> dict[str, Any]:
    work = plan.work_dir.resolve()
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    small = _input_archive(plan, inputs)
    feed: dict[str, Any] | None = None
    if plan.feed_model is not None:
        available = len(os.sched_getaffinity(0))
        ceilings = run_feed_ceiling(
            config, copies_of(small, inputs, plan.feed_factor), work, transcriber_factory, plan.feed_model,
            sorted({1, available}), plan.repeat, plan.database_server,
        )  # fmt: skip
        feed = feed_report(ceilings, plan.gpu_rate, plan.feed_factor)
    if plan.feed_only:
        assert feed is not None, "the feed ceiling needs a model to decode with"
        report = {"machine": _machine(), "archive": small.name, "repeat": plan.repeat, "feed": feed}
        _write_json(plan, report)
        return report

    large = copies_of(small, inputs, plan.large_factor)
    transcriber = transcriber_factory(LoadOptions.of(config.decode))
    device = transcriber.device.device
    runs = _rounds(config, plan, small, work, transcriber, GpuSampler(device, GPU_SAMPLE_INTERVAL_S))
    sources = sorted((work / "sequential" / "extract").rglob("*"))
    conversion = compare_conversion([p for p in sources if p.is_file()], work / "conversion")
    shutil.rmtree(work / "sequential" / "extract", ignore_errors=True)

    log.info("process-tar on %s and on %s, sampling memory and scratch", small.name, large.name)
    peak_small = run_process_tar(config, small, work / "process-small", config.dsn)
    peak_large = run_process_tar(config, large, work / "process-large", config.dsn)
    batch_bytes = largest_batch_bytes(large, config.stream_batch_size)
    report = _report(
        config, plan, small, device, runs, conversion, (peak_small, peak_large), batch_bytes, feed
    )
    _write_json(plan, report)
    return report


def _input_archive(plan: BenchPlan, inputs: Path) -> Path:
    """The archive to run on: the one given, or a synthetic one of `plan.members` members."""
    if plan.archive is not None:
        if not plan.archive.is_file():
            raise ConfigError(f"archive {plan.archive} does not exist")
        return plan.archive.resolve()
    small = inputs / f"synthetic-{plan.members}.tar.xz"
    if not small.exists():
        log.info("writing a synthetic archive of %d members", plan.members)
        synthetic_archive(small, plan.members)
    return small


def _rounds(
    config: PipelineConfig,
    plan: BenchPlan,
    small: Path,
    work: Path,
    transcriber: TranscriberLike,
    gpu: GpuSampler,
) -> dict[str, list[Run]]:
    """`plan.repeat` rounds, each variant once per round in turn: the machine's drift falls on
    every variant alike, and the report compares their medians."""
    names = ["sequential", "streaming", "transcribe_only", "per_member", "retranscribe"]
    runs: dict[str, list[Run]] = {name: [] for name in names + [f"timestamps_{m}" for m in Timestamps]}
    decoder = DecodeOptions.of(config.decode).decoder
    for n in range(1, plan.repeat + 1):
        log.info("round %d of %d: sequential", n, plan.repeat)
        runs["sequential"].append(run_sequential(config, small, work / "sequential", transcriber))
        audio = [load_16k(p) for p in sorted((work / "sequential" / "stage").rglob("*.flac"))]
        log.info("round %d of %d: %s decoder alone", n, plan.repeat, decoder)
        alone = run_transcribe_only(audio, transcriber, config, gpu, work / "transcribe-only.json")
        runs["transcribe_only"].append(alone)
        log.info("round %d of %d: per-member decoder alone", n, plan.repeat)
        runs["per_member"].append(
            run_transcribe_only(audio, transcriber, replace(config, decoder="per-member"), gpu)
        )
        for mode in Timestamps:
            if mode == config.timestamps:  # the decoder-alone run above
                runs[f"timestamps_{mode}"].append(alone)
                continue
            log.info("round %d of %d: decoder alone, --timestamps %s", n, plan.repeat, mode)
            timed = run_transcribe_only(audio, transcriber, replace(config, timestamps=mode), gpu)
            runs[f"timestamps_{mode}"].append(timed)
        del audio
        log.info("round %d of %d: streaming", n, plan.repeat)
        runs["streaming"].append(
            run_streaming(config, small, work / "streaming", transcriber, config.dsn, gpu)
        )
        log.info("round %d of %d: re-transcription from the FLACs", n, plan.repeat)
        retranscribed = run_retranscribe(config, small, work / "streaming", transcriber, config.dsn, gpu)
        runs["retranscribe"].append(retranscribed)
    return runs


def _write_json(plan: BenchPlan, report: dict[str, Any]) -> None:
    if plan.json_path is not None:
        plan.json_path.parent.mkdir(parents=True, exist_ok=True)
        plan.json_path.write_text(json.dumps(report, indent=2) + "\n")


def _report(
    config: PipelineConfig,
    plan: BenchPlan,
    archive: Path,
    device: str,
    runs: Mapping[str, Sequence[Run]],
    conversion: dict[str, Any],
    peaks: tuple[ProcessPeak, ProcessPeak],
    batch_bytes: int,
    feed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    median = {name: median_run(variant) for name, variant in runs.items()}
    seq, stream, floor, per_member = (
        median[k] for k in ("sequential", "streaming", "transcribe_only", "per_member")
    )
    timed_wall = {mode: median[f"timestamps_{mode}"].wall_s for mode in Timestamps}
    report: dict[str, Any] = {
        "machine": _machine(),
        "device": device,
        "model": Path(config.model).name,
        "settings": _settings(config),
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
            **{f"timestamps_{m}": median[f"timestamps_{m}"].stages for m in Timestamps},
        },
        "gpu": {name: run.gpu for name, run in median.items() if run.gpu},
        "ratio_streaming_sequential": stream.wall_s / seq.wall_s,
        "ratio_streaming_transcribe_only": stream.wall_s / floor.wall_s,
        "ratio_streaming_transcribe_only_throughput": stream.audio_per_wall / floor.audio_per_wall,
        "ratio_streaming_per_member_throughput": stream.audio_per_wall / per_member.audio_per_wall,
        "ratio_transcribe_only_per_member_throughput": floor.audio_per_wall / per_member.audio_per_wall,
        "ratio_retranscribe_streaming": median["retranscribe"].wall_s / stream.wall_s,
        "ratio_timestamps_segment_none": timed_wall[Timestamps.SEGMENT] / timed_wall[Timestamps.NONE],
        "ratio_timestamps_word_none": timed_wall[Timestamps.WORD] / timed_wall[Timestamps.NONE],
        "gpu_busy_streaming": (stream.gpu or {}).get("busy"),
        "conversion": conversion,
        **_memory(peaks, batch_bytes),
    }
    for name, run in median.items():
        report[f"{name}_wall_s"] = run.wall_s
        report[f"{name}_audio_s"] = run.audio_s
        report[f"{name}_audio_s_per_wall_s"] = run.audio_per_wall
    if feed is not None:
        report["feed"] = feed
        report["feed_ceiling"] = feed["feed_ceiling"]
        report["ratio_feed_cores"] = feed.get("ratio_feed_cores")
    report["targets"] = _targets(report, device)
    return report


def _settings(config: PipelineConfig) -> dict[str, Any]:
    names = (
        "device", "compute_type", "decode_batch_size", "process_batch_size", "max_new_tokens", "beam_size",
        "temperatures", "vad", "timestamps", "stream_batch_size", "num_workers", "cpu_threads",
        "transcribe_workers", "max_concurrent_uploads",
    )  # fmt: skip
    return {"decoder": DecodeOptions.of(config.decode).decoder, **{n: getattr(config, n) for n in names}}


def _memory(peaks: tuple[ProcessPeak, ProcessPeak], batch_bytes: int) -> dict[str, Any]:
    """process-tar's peaks on the small and the large archive: flat memory is a ratio near 1."""
    small, large = peaks
    scratch = max(small.peak_scratch_bytes, large.peak_scratch_bytes)
    out: dict[str, Any] = {}
    for label, peak in (("small", small), ("large", large)):
        out[f"peak_pss_mb_{label}"] = peak.peak_pss_mb
        out[f"peak_main_pss_mb_{label}"] = peak.peak_main_pss_mb
        out[f"peak_rss_mb_{label}"] = peak.peak_rss_mb
        out[f"peak_main_rss_mb_{label}"] = peak.peak_main_rss_mb
        out[f"process_tar_wall_s_{label}"] = peak.wall_s
    out["ratio_pss_large_small"] = large.peak_pss_mb / small.peak_pss_mb
    out["peak_scratch_bytes"] = scratch
    out["stream_batch_bytes"] = batch_bytes
    out["scratch_peak_batches"] = scratch / batch_bytes if batch_bytes else 0.0
    return out


def _targets(report: dict[str, Any], device: str) -> list[dict[str, Any]]:
    targets = []
    for key, limit, sense, text, devices in TARGETS:
        value = report.get(key)
        if device not in devices or value is None:
            continue
        met = value <= limit if sense == "max" else value >= limit
        targets.append({"what": text, "value": value, "limit": limit, "met": met})
    return targets


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
        *((f"timestamps_{m}", f"{decoder} decoder alone, --timestamps {m}") for m in Timestamps),
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

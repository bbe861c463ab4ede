"""Decode any soundfile-readable audio, downmix to mono, resample to 16 kHz, write 16-bit FLAC.

Runs in worker processes. Audio is processed in blocks through soxr's streaming resampler, so a
member of hours costs the same memory as one of seconds.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import ConversionError

log = logging.getLogger(__name__)

TARGET_RATE = 16000
# Whisper's feature extractor uses a 400-sample FFT window: anything shorter cannot be analysed.
MIN_SAMPLES = 400
BLOCK_FRAMES = 1 << 18


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    duration_s: float  # of the source, as decoded
    samples_16k: int
    convert_s: float = 0.0  # seconds the conversion took (in its pool process)

    @property
    def output_duration_s(self) -> float:
        return self.samples_16k / TARGET_RATE


def exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Conversion-pool initializer: a worker process outlives its parent by at most `interval`.

    A parent killed by SIGKILL, or leaving through os._exit on a second signal, never shuts its
    pool down, and an orphaned pool process would otherwise wait on its queue forever.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def warm_up() -> None:
    """Import the decoders in a pool process before the first member arrives."""
    import soundfile  # noqa: F401
    import soxr  # noqa: F401


def conversion_pool(workers: int) -> ProcessPoolExecutor:
    """Processes for convert_to_flac, started now (they import the decoders while the caller loads
    its model). Spawned, not forked: the parent has threads and database connections."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    )
    for _ in range(workers):
        pool.submit(warm_up)
    return pool


def convert_to_flac(src: str, dst: str, *, remove_source: bool = False) -> AudioInfo:
    """Convert one file; raises ConversionError with a reason a person can act on.

    `remove_source` deletes `src` as soon as it is read, converted or not: scratch then holds a
    member's source only while it is being converted.
    """
    started = time.monotonic()
    try:
        return replace(_convert(src, dst), convert_s=time.monotonic() - started)
    finally:
        if remove_source:
            Path(src).unlink(missing_ok=True)


def _convert(src: str, dst: str) -> AudioInfo:
    import soundfile as sf
    import soxr

    out_path = Path(dst)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".part")
    try:
        with sf.SoundFile(src) as source:
            rate, channels = source.samplerate, source.channels
            if rate <= 0 or channels <= 0:
                raise ConversionError(f"invalid header: {rate} Hz, {channels} channels")
            resampler = (
                None if rate == TARGET_RATE else soxr.ResampleStream(rate, TARGET_RATE, 1, "float32", "HQ")
            )
            decoded = 0
            written = 0
            with sf.SoundFile(tmp_path, "w", TARGET_RATE, 1, "PCM_16", format="FLAC") as sink:
                while True:
                    block = source.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
                    last = len(block) < BLOCK_FRAMES
                    decoded += len(block)
                    mono = block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0]
                    if resampler is not None:
                        mono = resampler.resample_chunk(mono, last=last)
                    if len(mono):
                        sink.write(np.clip(mono, -1.0, 1.0))
                        written += len(mono)
                    if last:
                        break
    except ConversionError:
        tmp_path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types; all mean "undecodable"
        tmp_path.unlink(missing_ok=True)
        raise ConversionError(f"cannot decode: {_short(exc)}") from None
    if decoded == 0:
        tmp_path.unlink(missing_ok=True)
        raise ConversionError("no audio frames (empty file or missing data chunk)")
    if written < MIN_SAMPLES:
        tmp_path.unlink(missing_ok=True)
        raise ConversionError(f"too short: {written} samples at 16 kHz, Whisper needs at least {MIN_SAMPLES}")
    tmp_path.replace(out_path)
    return AudioInfo(sample_rate=rate, channels=channels, duration_s=decoded / rate, samples_16k=written)


def load_16k(path: Path) -> np.ndarray:
    """Read a FLAC this module wrote, as the float32 array faster-whisper takes."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32")
    if rate != TARGET_RATE:  # pragma: no cover - we only read what we wrote
        raise ConversionError(f"{path} is {rate} Hz, expected {TARGET_RATE}")
    return data


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]

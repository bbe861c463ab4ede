"""Decode a member, downmix to mono, resample to 16 kHz, write 16-bit FLAC.

soundfile (libsndfile: WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, NIST SPHERE...) is tried first; what
it cannot open goes to PyAV (the FFmpeg libraries faster-whisper already installs; no ffmpeg
binary): AAC/M4A/MP4, WebM/Matroska, Opus in any container, WMA, AMR and more. Both are read in
blocks through soxr's streaming resampler, so a member of hours costs the same memory as one of
seconds. Runs in worker processes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError
from ..transcript import SourceAudio

log = logging.getLogger(__name__)

TARGET_RATE = 16000
# Whisper's feature extractor uses a 400-sample FFT window: anything shorter cannot be analysed.
MIN_SAMPLES = 400
BLOCK_FRAMES = 1 << 18
# 16-bit PCM as libsndfile (1.2) converts float: x * 32768 rounded and clipped to int16, read
# back as q / 32768. Done here, so that the samples the decoder gets are the FLAC's, bit for bit.
PCM_SCALE = np.float32(0x8000)
PCM_READ_SCALE = np.float32(1.0 / 0x8000)


# Suffixes of headerless PCM: no audio library can know its rate or layout.
RAW_SUFFIXES = frozenset({".raw", ".pcm", ".s16", ".s16le", ".u8", ".f32", ".bin", ""})


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    duration_s: float  # of the source, as decoded
    samples_16k: int
    convert_s: float = 0.0  # seconds the conversion took (in its pool process)
    reader: str = "soundfile"  # which audio library read the source: soundfile or pyav
    # The FLAC's own 16-bit samples in the blocks they were written in, when asked for
    # (`keep_samples`): the worker hands them to the decoder instead of reading the FLAC back.
    # Blocks, so that no process holds a second whole copy to join them. Taken with
    # `take_samples`, never kept.
    samples: tuple[np.ndarray, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def output_duration_s(self) -> float:
        return self.samples_16k / TARGET_RATE

    def source(self) -> SourceAudio:
        """What a transcript records of the audio it was made from."""
        return SourceAudio(self.sample_rate, self.channels, self.duration_s, self.reader)


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
    import av  # noqa: F401
    import soundfile  # noqa: F401
    import soxr  # noqa: F401


def convert_to_flac(
    src: str, dst: str, *, remove_source: bool = False, keep_samples: bool = False
) -> AudioInfo:
    """Convert one file; raises ConversionError with a reason a person can act on.

    `remove_source` deletes `src` as soon as it is read, converted or not: scratch then holds a
    member's source only while it is being converted. `keep_samples` returns the samples written
    (AudioInfo.samples), so that the decoder's input costs no second FLAC decode.
    """
    started = time.monotonic()
    try:
        return replace(_convert(src, dst, keep_samples), convert_s=time.monotonic() - started)
    finally:
        if remove_source:
            Path(src).unlink(missing_ok=True)


def take_samples(info: AudioInfo, flac: Path) -> tuple[AudioInfo, np.ndarray]:
    """(info without its samples, the member's audio as the decoder takes it). The kept samples
    are made float exactly as libsndfile reads the FLAC back (it holds the same 16-bit values);
    without them (a converter that kept none), the FLAC is read back."""
    if info.samples is None:
        return info, load_16k(flac)
    audio = np.empty(sum(len(block) for block in info.samples), dtype=np.float32)
    at = 0
    for block in info.samples:  # int16 -> float32 is exact
        audio[at : at + len(block)] = block
        at += len(block)
    audio *= PCM_READ_SCALE
    return replace(info, samples=None), audio


def _convert(src: str, dst: str, keep_samples: bool) -> AudioInfo:
    """soundfile first; PyAV for what libsndfile cannot open. A member neither reads fails with
    both reasons, in terms of the member (never its scratch path)."""
    import soundfile as sf

    try:
        source = sf.SoundFile(src)
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types for "cannot open"
        sf_reason = _short(exc, src)
    else:
        with source:
            blocks = _soundfile_blocks(source)
            return _write(dst, source.samplerate, source.channels, blocks, "soundfile", keep_samples)
    try:
        return _convert_pyav(src, dst, keep_samples)
    except ConversionError as exc:
        av_reason = str(exc)
    if Path(src).suffix.lower() in RAW_SUFFIXES:
        raise ConversionError(f"no header: sample rate unknown (soundfile: {sf_reason}; PyAV: {av_reason})")
    raise ConversionError(f"cannot decode: soundfile: {sf_reason}; PyAV: {av_reason}")


def _soundfile_blocks(source: Any) -> Iterator[np.ndarray]:
    while True:
        block = source.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        if len(block):
            yield block
        if len(block) < BLOCK_FRAMES:
            return


def _convert_pyav(src: str, dst: str, keep_samples: bool) -> AudioInfo:
    """The first audio stream, decoded frame by frame into float32 blocks."""
    import av

    try:
        container = av.open(src, metadata_errors="ignore")
    except Exception as exc:  # noqa: BLE001 - PyAV's errors are many FFmpeg error types
        raise ConversionError(_short(exc, src)) from None
    with container:
        stream = next(iter(container.streams.audio), None)
        if stream is None:
            raise ConversionError("no audio stream")
        context = stream.codec_context
        rate, channels = context.sample_rate, context.channels
        if not rate or not channels:
            raise ConversionError(f"invalid audio stream: {rate} Hz, {channels} channels")
        # Planar float at the source's rate and layout; downmix and resampling stay ours (soxr).
        planar = av.AudioResampler(format="fltp", layout=context.layout, rate=rate)

        def blocks() -> Iterator[np.ndarray]:
            try:
                for frame in container.decode(stream):
                    for out in planar.resample(frame):
                        yield out.to_ndarray().T
                for out in planar.resample(None):
                    yield out.to_ndarray().T
            except av.error.FFmpegError as exc:
                raise ConversionError(_short(exc, src)) from None

        return _write(dst, rate, channels, blocks(), "pyav", keep_samples)


def _write(
    dst: str, rate: int, channels: int, blocks: Iterator[np.ndarray], reader: str, keep_samples: bool
) -> AudioInfo:
    """Blocks of (frames, channels) float32 → mono → soxr stream resample → 16-bit FLAC, written
    under a temporary name and renamed when complete. Quantised here as libsndfile would
    (`PCM_SCALE`), so that the kept samples are the FLAC's."""
    import soundfile as sf
    import soxr

    out_path = Path(dst)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".part")
    if rate <= 0 or channels <= 0:
        raise ConversionError(f"invalid header: {rate} Hz, {channels} channels")
    resampler = None if rate == TARGET_RATE else soxr.ResampleStream(rate, TARGET_RATE, 1, "float32", "HQ")
    decoded = written = 0
    kept: list[np.ndarray] = []
    try:
        with sf.SoundFile(tmp_path, "w", TARGET_RATE, 1, "PCM_16", format="FLAC") as sink:
            for block in _with_last(blocks):
                data, last = block
                decoded += len(data)
                mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
                if resampler is not None:
                    mono = resampler.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32), last=last)
                if len(mono):
                    pcm = np.clip(np.rint(mono * PCM_SCALE), -32768, 32767).astype(np.int16)
                    sink.write(pcm)
                    written += len(pcm)
                    if keep_samples:
                        kept.append(pcm)
    except ConversionError:
        tmp_path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - a reader failing mid-stream: undecodable member
        tmp_path.unlink(missing_ok=True)
        raise ConversionError(f"cannot decode ({reader}): {_short(exc)}") from None
    if decoded == 0:
        tmp_path.unlink(missing_ok=True)
        raise ConversionError("no audio frames (empty file or missing data chunk)")
    if written < MIN_SAMPLES:
        tmp_path.unlink(missing_ok=True)
        raise ConversionError(f"too short: {written} samples at 16 kHz, Whisper needs at least {MIN_SAMPLES}")
    tmp_path.replace(out_path)
    samples = tuple(kept) if keep_samples else None
    return AudioInfo(rate, channels, decoded / rate, written, reader=reader, samples=samples)


def _with_last(blocks: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, bool]]:
    """Each block with whether it is the last (the resampler flushes on it); an empty last
    block when the source ends on a block boundary."""
    previous: np.ndarray | None = None
    for block in blocks:
        if previous is not None:
            yield previous, False
        previous = block
    if previous is not None:
        yield previous, True


def load_16k(path: Path) -> np.ndarray:
    """Read a FLAC this module wrote, as the float32 array faster-whisper takes."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32")
    if rate != TARGET_RATE:  # pragma: no cover - we only read what we wrote
        raise ConversionError(f"{path} is {rate} Hz, expected {TARGET_RATE}")
    return data


def _short(exc: BaseException, path: str | None = None) -> str:
    """The error's first line, with the scratch path (an index name nobody knows) left out."""
    text = str(exc).strip() or type(exc).__name__
    if path:
        text = text.replace(f"'{path}'", "the member").replace(path, "the member")
    return text.splitlines()[0][:500]

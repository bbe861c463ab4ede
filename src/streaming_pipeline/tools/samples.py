"""Generate a sample day: archives of espeak-ng speech in several formats, rates and folders.

Used by the demo, the tests and the benchmark, so that all of them run on real speech audio
without shipping any.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np

from ..errors import ConfigError

XzPreset = Literal[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]

log = logging.getLogger(__name__)

# (espeak-ng voice, sentence): each spoken in its own language, so a real model hears a
# broadcast day's mix of languages.
SPOKEN = (
    ("en", "Good morning, this is the early news on the first programme."),
    ("en", "Weather for the coast: light winds, some rain spreading from the west."),
    ("de", "Guten Morgen, hier sind die Nachrichten des Tages."),
    ("fr", "Bonjour et bienvenue dans notre journal de midi."),
    ("en", "Traffic is heavy on the ring road after an earlier accident."),
    ("es", "Buenos dias, estas son las noticias de la manana."),
    ("en", "And now the music, with a classic from the archives."),
    ("en", "That was the end of the bulletin. Back to the studio."),
)
SENTENCES = tuple(text for _, text in SPOKEN)


@dataclass(frozen=True)
class Variant:
    suffix: str
    rate: int
    channels: int
    fmt: str
    subtype: str | None


VARIANTS = (
    Variant(".wav", 22050, 1, "WAV", "PCM_16"),
    Variant(".flac", 44100, 2, "FLAC", "PCM_16"),
    Variant(".ogg", 48000, 1, "OGG", "VORBIS"),
    Variant(".wav", 8000, 1, "WAV", "PCM_16"),
    Variant(".mp3", 44100, 2, "MP3", "MPEG_LAYER_III"),
    Variant(".wav", 16000, 2, "WAV", "FLOAT"),
)


def speak(text: str, *, voice: str = "en") -> tuple[np.ndarray, int]:
    """espeak-ng speech as float32 samples (22.05 kHz mono)."""
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("espeak-ng is not installed (apt-get install espeak-ng)")
    proc = subprocess.run([exe, "-v", voice, "--stdout", "--", text], capture_output=True, check=True)
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return data, rate


def encode(samples: np.ndarray, rate: int, variant: Variant) -> bytes:
    import soundfile as sf
    import soxr

    audio = samples if rate == variant.rate else soxr.resample(samples, rate, variant.rate)
    if variant.channels == 2:
        audio = np.stack([audio, audio * 0.8], axis=1)
    buf = io.BytesIO()
    sf.write(buf, audio, variant.rate, format=variant.fmt, subtype=variant.subtype)
    return buf.getvalue()


@dataclass(frozen=True)
class PyavVariant:
    """A format libsndfile cannot read, written with PyAV's encoders (what broadcast and the web
    deliver: AAC in MP4/M4A, Opus in WebM, WMA, AMR, 5.1 AC-3)."""

    suffix: str
    container: str
    codec: str
    rate: int
    layout: str


PYAV_VARIANTS = (
    PyavVariant(".m4a", "mp4", "aac", 44100, "stereo"),
    PyavVariant(".mp4", "mp4", "aac", 48000, "mono"),
    PyavVariant(".webm", "webm", "libopus", 48000, "stereo"),
    PyavVariant(".mka", "matroska", "libopus", 48000, "mono"),
    PyavVariant(".wma", "asf", "wmav2", 44100, "stereo"),
    PyavVariant(".amr", "amr", "libopencore_amrnb", 8000, "mono"),
    PyavVariant(".ac3", "ac3", "ac3", 48000, "5.1"),
)


def encode_pyav(samples: np.ndarray, rate: int, variant: PyavVariant) -> bytes:
    """`samples` (mono float32) encoded by PyAV in `variant`'s container and codec."""
    import av
    import soxr

    audio = samples if rate == variant.rate else soxr.resample(samples, rate, variant.rate)
    buf = io.BytesIO()
    with av.open(buf, "w", format=variant.container) as out:
        added = out.add_stream(variant.codec, rate=variant.rate, layout=variant.layout)
        stream = cast("av.AudioStream", added)
        stream.codec_context.bit_rate = 12200 if variant.codec == "libopencore_amrnb" else 96000
        channels = stream.codec_context.layout.nb_channels
        planar = np.repeat(audio[None, :].astype(np.float32), channels, axis=0)
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=variant.layout)
        frame.sample_rate = variant.rate
        resampler = av.AudioResampler(
            format=stream.codec_context.format, layout=variant.layout, rate=variant.rate,
            frame_size=stream.codec_context.frame_size or None,
        )  # fmt: skip
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    return buf.getvalue()


def clip_files(count: int, *, seed: int = 0) -> Iterable[tuple[str, bytes]]:
    """(member name, encoded bytes) for `count` clips spread over nested folders and formats."""
    cache: dict[int, tuple[np.ndarray, int]] = {}
    for i in range(count):
        k = (i + seed) % len(SENTENCES)
        if k not in cache:
            voice, text = SPOKEN[k]
            cache[k] = speak(text, voice=voice)
        samples, rate = cache[k]
        variant = VARIANTS[i % len(VARIANTS)]
        folder = ("studio_a", "studio_b/live", "field/2025")[i % 3]
        yield f"{folder}/clip_{i:05d}{variant.suffix}", encode(samples, rate, variant)


def write_tar_xz(path: Path, files: Iterable[tuple[str, bytes]], *, preset: XzPreset = 1) -> Path:
    """Pack (name, data) pairs into a .tar.xz, written to a temporary name then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, mode="w:xz", preset=preset) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1737800000
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return path


def make_sample_day(root: Path, day: str, *, archives: int = 2, members: int = 6) -> list[Path]:
    """`<root>/<day>/<HH_MM>.tar.xz` archives of `members` clips each."""
    paths = []
    for a in range(archives):
        slot = f"{6 + a // 2:02d}_{(a % 2) * 30:02d}"
        paths.append(write_tar_xz(root / day / f"{slot}.tar.xz", clip_files(members, seed=a)))
        log.info("wrote %s (%d members)", paths[-1], members)
    return paths

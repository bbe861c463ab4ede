from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streaming_pipeline.audio import MIN_SAMPLES, convert_to_flac
from streaming_pipeline.errors import ConversionError


def test_every_generated_format_becomes_16k_mono_flac(tmp_path: Path, clips: list[tuple[str, bytes]]) -> None:
    for name, data in clips:
        src = tmp_path / Path(name).name
        src.write_bytes(data)
        dst = tmp_path / "out" / (src.stem + ".flac")
        info = convert_to_flac(str(src), str(dst))
        out = sf.info(str(dst))
        assert (out.samplerate, out.channels, out.format, out.subtype) == (16000, 1, "FLAC", "PCM_16")
        original = sf.info(io.BytesIO(data))
        assert (info.sample_rate, info.channels) == (original.samplerate, original.channels)
        # Resampling keeps the duration (MP3 decoders may pad a frame).
        assert abs(info.output_duration_s - original.duration) < 0.1
        assert out.frames == info.samples_16k
        assert not list(dst.parent.glob("*.part"))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "cannot decode|no audio"),
        (
            b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00" * 2,
            "cannot decode|no audio",
        ),
        (b"definitely not audio" * 50, "cannot decode"),
    ],
    ids=["zero-length", "no-data-chunk", "garbage"],
)
def test_undecodable_input_fails_with_a_reason(tmp_path: Path, payload: bytes, match: str) -> None:
    src = tmp_path / "bad.wav"
    src.write_bytes(payload)
    with pytest.raises(ConversionError, match=match):
        convert_to_flac(str(src), str(tmp_path / "bad.flac"))
    assert not (tmp_path / "bad.flac").exists()


def test_flac_cut_after_its_header_fails(tmp_path: Path, clips: list[tuple[str, bytes]]) -> None:
    flac = next(data for name, data in clips if name.endswith(".flac"))
    src = tmp_path / "cut.flac"
    src.write_bytes(flac[:200])  # header and nothing else
    with pytest.raises(ConversionError):
        convert_to_flac(str(src), str(tmp_path / "cut-out.flac"))


def test_too_short_for_whisper(tmp_path: Path) -> None:
    src = tmp_path / "tiny.wav"
    sf.write(src, np.zeros(MIN_SAMPLES - 1, dtype=np.float32), 16000)
    with pytest.raises(ConversionError, match="too short"):
        convert_to_flac(str(src), str(tmp_path / "tiny.flac"))
    sf.write(src, np.zeros(MIN_SAMPLES, dtype=np.float32), 16000)
    assert convert_to_flac(str(src), str(tmp_path / "tiny.flac")).samples_16k == MIN_SAMPLES

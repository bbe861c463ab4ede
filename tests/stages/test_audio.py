from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streaming_pipeline.errors import ConversionError
from streaming_pipeline.stages.audio import (
    BLOCK_FRAMES,
    MIN_SAMPLES,
    PCM_SCALE,
    convert_to_flac,
    load_16k,
    take_samples,
)
from streaming_pipeline.tools.samples import PYAV_VARIANTS


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


def test_kept_samples_are_the_flacs_bit_for_bit(tmp_path: Path, clips: list[tuple[str, bytes]]) -> None:
    """The decoder gets the kept samples instead of the FLAC read back: they must be the same
    array, for every format (resampled or not, stereo, 8 to 32 bits)."""
    for name, data in clips:
        src = tmp_path / Path(name).name
        src.write_bytes(data)
        dst = tmp_path / "out" / (src.stem + ".flac")
        info = convert_to_flac(str(src), str(dst), keep_samples=True)
        assert info.samples is not None and {b.dtype for b in info.samples} == {np.dtype(np.int16)}
        assert sum(len(b) for b in info.samples) == info.samples_16k
        bare, audio = take_samples(info, dst)
        assert bare.samples is None and bare == info  # nothing of the samples stays behind
        read_back = load_16k(dst)
        assert audio.dtype == read_back.dtype == np.float32
        assert np.array_equal(audio, read_back), name
    assert convert_to_flac(str(src), str(tmp_path / "plain.flac")).samples is None
    # Longer than one read block, loud enough to clip: several blocks, joined in order.
    long = tmp_path / "long.wav"
    t = np.arange(BLOCK_FRAMES * 2 + 1234) / 44100
    sf.write(long, (1.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100, subtype="FLOAT")
    info = convert_to_flac(str(long), str(tmp_path / "long.flac"), keep_samples=True)
    assert info.samples is not None and len(info.samples) == 3
    assert np.array_equal(take_samples(info, tmp_path / "long.flac")[1], load_16k(tmp_path / "long.flac"))


def test_quantised_as_libsndfile_would(tmp_path: Path) -> None:
    """The FLACs hold what libsndfile made of the float samples before they were quantised here
    (so the FLACs and transcripts did not change): rounding to nearest, halves to even, clipped
    at full scale in both directions."""
    rng = np.random.default_rng(3)
    edges = np.array([1.0, -1.0, 1.5, -1.5, 0.5 / 32768, 1.5 / 32768, -2.5 / 32768, 32767.5 / 32768])
    x = np.concatenate([rng.standard_normal(50_000) * 0.4, edges]).astype(np.float32)
    sf.write(tmp_path / "libsndfile.flac", x, 16000, "PCM_16", format="FLAC")
    theirs, _ = sf.read(tmp_path / "libsndfile.flac", dtype="int16")
    ours = np.clip(np.rint(x * PCM_SCALE), -32768, 32767).astype(np.int16)
    assert np.array_equal(ours, theirs)


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


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    from streaming_pipeline.tools.samples import speak

    return speak("Recorded radio and television is often AAC in an MP4 container.")


@pytest.mark.parametrize("variant", PYAV_VARIANTS, ids=lambda v: v.suffix)
def test_what_libsndfile_cannot_open_is_decoded_by_pyav(tmp_path: Path, speech, variant) -> None:
    from streaming_pipeline.tools.samples import encode_pyav

    samples, rate = speech
    src = tmp_path / f"member{variant.suffix}"
    src.write_bytes(encode_pyav(samples, rate, variant))
    with pytest.raises(RuntimeError):
        sf.info(str(src))  # libsndfile really cannot
    dst = tmp_path / "out.flac"
    info = convert_to_flac(str(src), str(dst), keep_samples=True)
    assert info.reader == "pyav"
    assert np.array_equal(take_samples(info, dst)[1], load_16k(dst))  # what the decoder gets
    assert info.channels == (6 if variant.layout == "5.1" else 2 if variant.layout == "stereo" else 1)
    out = sf.info(str(dst))
    assert (out.samplerate, out.channels, out.subtype) == (16000, 1, "PCM_16")
    # Encoders add priming and padding (AAC ~50 ms, AMR/AC-3 a frame): same duration within 0.1 s.
    assert abs(info.output_duration_s - len(samples) / rate) < 0.1
    decoded, _ = sf.read(str(dst), dtype="float32")
    assert np.sqrt(np.mean(decoded**2)) > 0.01, "speech, not silence"


def test_soundfile_reads_first_and_records_it(tmp_path: Path, clips) -> None:
    name, data = clips[0]
    src = tmp_path / Path(name).name
    src.write_bytes(data)
    assert convert_to_flac(str(src), str(tmp_path / "o.flac")).reader == "soundfile"


def test_headerless_pcm_fails_saying_why(tmp_path: Path) -> None:
    src = tmp_path / "00000007.raw"
    src.write_bytes((np.random.default_rng(1).integers(-3000, 3000, 32000, dtype=np.int16)).tobytes())
    with pytest.raises(
        ConversionError, match=r"^no header: sample rate unknown \(soundfile: .*; PyAV: .*\)$"
    ):
        convert_to_flac(str(src), str(tmp_path / "o.flac"))


def test_errors_keep_the_reason_and_never_name_the_scratch_copy(tmp_path: Path) -> None:
    src = tmp_path / "batch-000000" / "in" / "00000017.wav"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"definitely not audio" * 50)
    with pytest.raises(ConversionError) as caught:
        convert_to_flac(str(src), str(tmp_path / "o.flac"))
    message = str(caught.value)
    assert str(src) not in message and "00000017" not in message
    assert message.startswith("cannot decode: soundfile: ") and "; PyAV: " in message
    assert "Format not recognised" in message or "not recognised" in message.lower()

"""Speech detection: faster-whisper's hysteresis, and the telephone line held to a lower threshold.

Real Silero (bundled with faster-whisper) on generated audio: no model download, no fakes."""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.vad import VadOptions, get_speech_timestamps
from scipy.signal import butter, sosfilt

from streaming_pipeline.stages.asr.vad import (
    FRAME,
    TELEPHONE_THRESHOLD,
    band_energies,
    detect_speech,
    speech_timestamps,
    telephone_frames,
    voiced_lines,
)

SR = 16000
OPTIONS = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)


def _voiced(seconds: float, seed: int = 0) -> np.ndarray:
    """A buzz with moving formants and a syllable rhythm: what Silero takes for a voice."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    buzz = sum(np.sin(k * phase) / k for k in range(1, 40))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * buzz * envelope + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def _line(audio: np.ndarray) -> np.ndarray:
    """A telephone line as speakers-dev made its caller: 300-3400 Hz, 8th-order Butterworth."""
    sos = butter(8, [300, 3400], btype="bandpass", fs=SR, output="sos")
    return sosfilt(sos, audio).astype(np.float32)


def test_the_hysteresis_is_faster_whispers_where_no_frame_is_a_telephone_line() -> None:
    rng = np.random.default_rng(1)
    audio = np.concatenate(
        [
            np.zeros(SR, np.float32),
            _voiced(3.0),
            0.001 * rng.standard_normal(SR).astype(np.float32),
            _voiced(2.0, 2),
        ]
    )
    assert detect_speech(audio, OPTIONS, telephone=False) == get_speech_timestamps(audio, OPTIONS)
    # and with every frame at one threshold, the function is theirs on any probabilities
    probs = rng.random(400).astype(np.float32)
    ones = np.ones(400)
    short = VadOptions(max_speech_duration_s=3.0, min_silence_duration_ms=100, speech_pad_ms=30)
    ours = speech_timestamps(probs, 0.5 * ones, 0.35 * ones, 400 * FRAME, short)
    assert ours, "random probabilities above 0.5 make speech"
    assert all(r["end"] > r["start"] for r in ours)


def test_a_band_limited_voice_is_a_telephone_line_and_a_full_band_one_or_a_bass_line_is_not() -> None:
    voice = _voiced(4.0)
    assert telephone_frames(*band_energies(_line(voice)))[20:-20].mean() > 0.9
    assert not telephone_frames(*band_energies(voice)).any()
    t = np.arange(4 * SR) / SR
    bass = (0.3 * np.sin(2 * np.pi * 60 * t) + 0.05 * np.sin(2 * np.pi * 880 * t)).astype(np.float32)
    assert not telephone_frames(*band_energies(bass)).any()  # energy under 250 Hz: not a line
    assert len(telephone_frames(*band_energies(np.zeros(100, np.float32)))) == 0


def test_the_line_lowers_the_threshold_only_where_it_is() -> None:
    """Silero's probabilities, scaled down as it scores a caller, clear the telephone threshold
    on the line's frames only: the same probabilities with no line there make no speech."""
    probs = np.full(200, 0.25, dtype=np.float32)
    line = np.zeros(200, dtype=bool)
    line[50:150] = True
    options = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160, speech_pad_ms=0)
    low, neg = np.where(line, TELEPHONE_THRESHOLD, 0.5), np.where(line, 0.1, 0.35)
    held = speech_timestamps(probs, low, neg, 200 * FRAME, options)
    assert [(r["start"] // FRAME, r["end"] // FRAME) for r in held] == [(50, 150)]
    assert speech_timestamps(probs, np.full(200, 0.5), np.full(200, 0.35), 200 * FRAME, options) == []


@pytest.mark.parametrize("seconds", [0.01, 1.0])
def test_short_audio_is_handled(seconds: float) -> None:
    audio = np.zeros(int(seconds * SR), np.float32)
    assert detect_speech(audio, OPTIONS) == []


@pytest.mark.realmodel
def test_the_phone_in_caller_is_heard_and_music_and_noise_are_not(speakers_set, broadcast_set) -> None:
    """speakers-dev's phone-in: the caller (LEC, 27 s through a G.711 line) was 7 s of speech regions at
    faster-whisper's threshold; on the line's frames at the lower one it is all of the call.
    broadcast-dev's music, noise and programmes gain next to nothing from the lower threshold."""
    from faster_whisper.audio import decode_audio

    def seconds(regions: list[dict[str, int]]) -> float:
        return sum(r["end"] - r["start"] for r in regions) / SR

    def caller_seconds(regions: list[dict[str, int]], turns: list[tuple[float, float]]) -> float:
        return sum(
            max(0.0, min(e, r["end"] / SR) - max(s, r["start"] / SR)) for r in regions for s, e in turns
        )

    audio = decode_audio(str(speakers_set / "dev01_phonein.flac"), sampling_rate=SR)
    rows = [line.split() for line in (speakers_set / "dev01_phonein.rttm").read_text().splitlines()]
    caller = [(float(r[3]), float(r[3]) + float(r[4])) for r in rows if r[7] == "LEC"]
    assert sum(e - s for s, e in caller) > 20
    before = caller_seconds(detect_speech(audio, OPTIONS, telephone=False), caller)
    after = caller_seconds(detect_speech(audio, OPTIONS), caller)
    assert before < 10 and after > 0.9 * sum(e - s for s, e in caller), (before, after)
    kinds = ("music", "noise", "silence", "programme", "speech_over_music")
    for path in sorted(p for kind in kinds for p in (broadcast_set / kind).iterdir()):
        audio = decode_audio(str(path), sampling_rate=SR)
        gained = seconds(detect_speech(audio, OPTIONS)) - seconds(
            detect_speech(audio, OPTIONS, telephone=False)
        )
        assert gained < 0.5, (path.name, gained)


def test_a_line_shorter_than_a_second_is_not_a_line() -> None:
    voice = _line(_voiced(0.6))
    padded = np.concatenate([_voiced(2.0, 3), voice, _voiced(2.0, 4)])
    assert not telephone_frames(*band_energies(padded)).any()


def test_a_line_counts_only_where_silero_hears_a_voice_on_it() -> None:
    line = np.zeros(100, dtype=bool)
    line[10:40] = line[60:90] = True
    probs = np.zeros(100, dtype=np.float32)
    probs[10:40] = 0.2  # a caller Silero is unsure of
    probs[60:90] = 0.03  # a band-limited recording with no voice
    kept = voiced_lines(line, probs)
    assert kept[10:40].all() and not kept[40:].any() and not kept[:10].any()

"""Where a member speaks: Silero VAD, with a lower threshold on telephone-band audio.

Silero's speech probability on a caller heard through a telephone line (300-3400 Hz, 8 kHz,
G.711) stays at 0.15-0.30 where the same voice full-band scores above 0.9: at faster-whisper's
threshold of 0.5 the decoder never sees the caller, and a phone-in's transcript and speaker
turns lose one side of the call (speakers-dev's dev01: 26 of the caller's 27 s). A telephone
line is recognisable from the spectrum alone: the band carries the energy, nothing comes through
above 4 kHz, and the line's high-pass removes what is under 250 Hz. Stretches of a second or more
with that shape, over which Silero hears something (its mean probability at least 0.1), are held
to `TELEPHONE_THRESHOLD`; every other frame to faster-whisper's own thresholds, so full-band
audio is detected exactly as before (a test compares the two on the same audio). Music and
noise rarely pass all three tests: on broadcast-dev's 22 music, noise and near-silence files, its
two programmes and its speech over music, the lower threshold adds nothing.

`speech_timestamps` is faster-whisper 1.2.1's `get_speech_timestamps` (MIT) with the two
thresholds per frame instead of per file; the probabilities come from its own Silero model.
Runs on the batched decoder's prep threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .policy import SAMPLE_RATE

if TYPE_CHECKING:
    from faster_whisper.vad import VadOptions

FRAME = 512  # Silero's window at 16 kHz: 32 ms
# Energies are compared over this many frames (0.5 s), a syllable or two.
SMOOTH_FRAMES = 16
# The line's shape: above 4 kHz at least this far under the 300-3400 Hz band, under 250 Hz at
# least this far; and the band within ACTIVE_DB of the member's loudest (so a noise floor with
# any shape is not a line).
HIGH_UNDER_BAND_DB = 30.0
LOW_UNDER_BAND_DB = 15.0
ACTIVE_DB = 40.0
# A call lasts: a stretch with the line's shape shorter than this (a dull chord, a bass note
# between two drums) is not a line. Without it the programmes' sung music gained 1-2 s of
# "speech" each; with it none.
LINE_MIN_S = 1.0
# ... and a line carries a voice: Silero's mean probability over the stretch at least this (the
# phone-in's calls 0.15-0.28; a band-limited old waltz, 0.00-0.04, would otherwise gain a
# "You" at the music's first chord).
LINE_VOICE_P = 0.1
TELEPHONE_THRESHOLD = 0.15
TELEPHONE_NEG_THRESHOLD = 0.10
_CHUNK_FRAMES = 4096  # frames transformed at once: memory stays flat however long the member


def band_energies(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame of `FRAME` samples: the energy under 250 Hz, in 300-3400 Hz and in 4-7.8 kHz."""
    n = len(audio) // FRAME
    freqs = np.fft.rfftfreq(FRAME, 1 / SAMPLE_RATE)
    low_bins = (freqs >= 50) & (freqs < 250)
    band_bins = (freqs >= 300) & (freqs < 3400)
    high_bins = (freqs >= 4000) & (freqs < 7800)
    window = np.hanning(FRAME).astype(np.float32)
    low, band, high = (np.empty(n, dtype=np.float64) for _ in range(3))
    for start in range(0, n, _CHUNK_FRAMES):
        stop = min(n, start + _CHUNK_FRAMES)
        frames = audio[start * FRAME : stop * FRAME].reshape(-1, FRAME) * window
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        low[start:stop] = power[:, low_bins].sum(axis=1)
        band[start:stop] = power[:, band_bins].sum(axis=1)
        high[start:stop] = power[:, high_bins].sum(axis=1)
    return low, band, high


def telephone_frames(low: np.ndarray, band: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Which frames sound like a telephone line (see the module's docstring), in stretches of at
    least LINE_MIN_S: a pure rule on the three energies of `band_energies`."""
    if len(band) == 0:
        return np.zeros(0, dtype=bool)
    kernel = np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES

    def level(x: np.ndarray) -> np.ndarray:
        return 10 * np.log10(np.convolve(x, kernel, "same") + 1e-12)

    low_db, band_db, high_db = level(low), level(band), level(high)
    active = band_db > band_db.max() - ACTIVE_DB
    line = active & (high_db < band_db - HIGH_UNDER_BAND_DB) & (low_db < band_db - LOW_UNDER_BAND_DB)
    edges = np.diff(np.concatenate([[0], line.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    out = np.zeros_like(line)
    min_frames = round(LINE_MIN_S * SAMPLE_RATE / FRAME)
    for start, end in zip(starts, ends, strict=True):
        if end - start >= min_frames:
            out[start:end] = True
    return out


def voiced_lines(line: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The stretches of `line` (telephone_frames) over which Silero's mean probability reaches
    LINE_VOICE_P: a call, not a band-limited recording of something else."""
    edges = np.diff(np.concatenate([[0], line.astype(np.int8), [0]]))
    out = np.zeros_like(line)
    for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if probs[start:end].mean() >= LINE_VOICE_P:
            out[start:end] = True
    return out


def speech_timestamps(
    probs: np.ndarray,
    thresholds: np.ndarray,
    neg_thresholds: np.ndarray,
    n_samples: int,
    options: VadOptions,
) -> list[dict[str, int]]:
    """Speech regions ([start, end) samples) from Silero's per-frame probabilities, each frame
    held to its own (threshold, neg_threshold) and `options`' durations (its thresholds are not
    read): faster-whisper's hysteresis, unchanged."""
    sr = SAMPLE_RATE
    min_speech_samples = sr * options.min_speech_duration_ms / 1000
    speech_pad_samples = sr * options.speech_pad_ms / 1000
    max_speech_samples = sr * options.max_speech_duration_s - FRAME - 2 * speech_pad_samples
    min_silence_samples = sr * options.min_silence_duration_ms / 1000
    min_silence_samples_at_max_speech = sr * 98 / 1000
    triggered = False
    speeches: list[dict[str, int]] = []
    current: dict[str, int] = {}
    temp_end = prev_end = next_start = 0
    for i, prob in enumerate(probs):
        at = FRAME * i
        threshold, neg_threshold = thresholds[i], neg_thresholds[i]
        if prob >= threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = at
        if prob >= threshold and not triggered:
            triggered = True
            current["start"] = at
            continue
        if triggered and at - current["start"] > max_speech_samples:
            # too long: cut at the last silence seen (and go on from the speech after it), or here
            had_silence = bool(prev_end)
            current["end"] = prev_end if had_silence else at
            speeches.append(current)
            resume = had_silence and next_start >= prev_end
            current = {"start": next_start} if resume else {}
            triggered = resume
            prev_end = next_start = temp_end = 0
            if not had_silence:
                continue
        if prob < neg_threshold and triggered:
            if not temp_end:
                temp_end = at
            if at - temp_end > min_silence_samples_at_max_speech:
                prev_end = temp_end
            if at - temp_end < min_silence_samples:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech_samples:
                speeches.append(current)
            current = {}
            prev_end = next_start = temp_end = 0
            triggered = False
            continue
    if current and n_samples - current["start"] > min_speech_samples:
        current["end"] = n_samples
        speeches.append(current)
    return _padded(speeches, speech_pad_samples, n_samples)


def _padded(speeches: list[dict[str, int]], pad: float, n_samples: int) -> list[dict[str, int]]:
    """The regions widened by `pad` samples each side, or by half the silence between two that
    are closer than twice that: faster-whisper's padding, unchanged."""
    for i, speech in enumerate(speeches):
        if i == 0:
            speech["start"] = int(max(0, speech["start"] - pad))
        if i != len(speeches) - 1:
            silence = speeches[i + 1]["start"] - speech["end"]
            if silence < 2 * pad:
                speech["end"] += int(silence // 2)
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - silence // 2))
            else:
                speech["end"] = int(min(n_samples, speech["end"] + pad))
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - pad))
        else:
            speech["end"] = int(min(n_samples, speech["end"] + pad))
    return speeches


def detect_speech(audio: np.ndarray, options: VadOptions, *, telephone: bool = True) -> list[dict[str, int]]:
    """The member's speech regions with faster-whisper's `VadOptions` (`options`), telephone-band
    frames held to the lower thresholds when `telephone`."""
    from faster_whisper.vad import get_vad_model

    padded = np.pad(audio, (0, FRAME - audio.shape[0] % FRAME))
    probs = get_vad_model()(padded).reshape(-1)
    threshold = options.threshold
    neg = options.neg_threshold
    neg_threshold = max(threshold - 0.15, 0.01) if neg is None else neg
    thresholds = np.full(len(probs), threshold)
    neg_thresholds = np.full(len(probs), neg_threshold)
    if telephone:
        line = voiced_lines(telephone_frames(*band_energies(padded))[: len(probs)], probs)
        thresholds[: len(line)][line] = min(threshold, TELEPHONE_THRESHOLD)
        neg_thresholds[: len(line)][line] = min(neg_threshold, TELEPHONE_NEG_THRESHOLD)
    return speech_timestamps(probs, thresholds, neg_thresholds, len(audio), options)

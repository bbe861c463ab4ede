from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from streaming_pipeline.config import PipelineConfig
from streaming_pipeline.stages.asr.loader import Transcriber
from streaming_pipeline.stages.asr.options import DecodeOptions, LoadOptions
from streaming_pipeline.tools.samples import speak

# The decoder alone: without the speaker stage (which keeps the words for itself, then drops them).
from ...conftest import RESULT_FIELDS, SEGMENT_FIELDS


def test_tiny_model_is_a_complete_multilingual_whisper(tiny_model: Path) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    assert len(config["lang_ids"]) == 99
    assert len(json.loads((tiny_model / "vocabulary.json").read_text())) == 51865
    assert (tiny_model / "model.bin").stat().st_size < 8 * 1024 * 1024
    t = Transcriber(
        LoadOptions.of(PipelineConfig(speakers=False, model=str(tiny_model), device="cpu").decode)
    )
    assert t.model.model.is_multilingual  # language detection really runs
    assert t.device.compute_type == "int8"


def test_transcript_structure_and_silence(tiny_model: Path) -> None:
    import soxr

    config = PipelineConfig(speakers=False, model=str(tiny_model), device="cpu", beam_size=2)
    t, options = Transcriber(LoadOptions.of(config.decode)), DecodeOptions.of(config.decode)
    speech, rate = speak("Testing one two three, this is the streaming pipeline.")
    audio = soxr.resample(speech, rate, 16000).astype(np.float32)
    result = t.transcribe(audio, options, archive="a.tar.xz", member="x/y.wav")
    # the decoders attach what made a transcript (test_decoder); the model wrapper alone does not know
    assert set(result.as_json()) == RESULT_FIELDS - {"provenance"}
    assert result.member == "x/y.wav" and result.model == "tiny-whisper"
    assert abs(result.duration - len(audio) / 16000) < 0.01
    assert len(result.language) in (2, 3) and 0.0 <= result.language_probability <= 1.0
    for seg in result.segments:
        assert set(seg.as_json()) == SEGMENT_FIELDS
        assert seg.start <= seg.end

    silent = t.transcribe(np.zeros(30 * 16000, dtype=np.float32), options, archive="a", member="s.wav")
    assert silent.text == "" and silent.segments == ()


def test_nul_bytes_never_reach_the_transcript() -> None:
    """Byte-level BPE can decode a 0x00 byte (the random model did, in CI); PostgreSQL text can't
    hold it, so one such file used to fail its whole batch's write."""
    from streaming_pipeline.transcript import clean_text

    assert clean_text(" ab\x00c \x00") == "abc"

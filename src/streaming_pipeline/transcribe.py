"""faster-whisper, loaded once per job; `transcribe` is called from `transcribe_workers` threads.

Language is detected per file unless configured: nothing of one file's decoding state (language,
previous text) is carried into the next.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import PipelineConfig, parse_temperatures
from .errors import ConfigError, TranscriptionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    device: str
    compute_type: str


def resolve_device(device: str, compute_type: str) -> Device:
    """auto means CUDA when CTranslate2 sees a GPU; float16 on GPU and int8 on CPU by default."""
    import ctranslate2

    cuda_count = ctranslate2.get_cuda_device_count()
    if device == "auto":
        device = "cuda" if cuda_count > 0 else "cpu"
    elif device == "cuda" and cuda_count == 0:
        raise ConfigError("--device cuda requested but CTranslate2 sees no CUDA device")
    if compute_type == "default":
        compute_type = "float16" if device == "cuda" else "int8"
    return Device(device, compute_type)


def local_model_dir(model: str) -> Path | None:
    """The directory a path-like --model names, or None for a hub name.

    A path that does not exist is an error, never a hub lookup: a typo must not start a download.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if "/" in model or model.startswith((".", "~")):
        raise ConfigError(f"model directory {model} does not exist")
    return None


def _clean_text(text: str) -> str:
    """Decoded text without NUL characters: byte-level BPE can emit a 0x00 byte, which PostgreSQL
    text cannot hold (it would fail the whole batch's write)."""
    return text.replace("\x00", "").strip()


class Transcriber:
    def __init__(self, config: PipelineConfig) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.config = config
        self.device = resolve_device(config.device, config.compute_type)
        model_dir = local_model_dir(config.model)
        started = time.monotonic()
        try:
            self.model = WhisperModel(
                str(model_dir) if model_dir else config.model,
                device=self.device.device,
                compute_type=self.device.compute_type,
                cpu_threads=config.cpu_threads,
                num_workers=config.transcribe_workers,
                local_files_only=model_dir is not None or config.offline,
            )
        except Exception as exc:
            raise TranscriptionError(f"cannot load model {config.model!r}: {exc}") from exc
        self.model_name = model_dir.name if model_dir else config.model
        # On a GPU, decode a file's VAD chunks as one batch so short clips still fill the device.
        # One pipeline per thread: it keeps per-call state (the last speech timestamp).
        self._batched_class = BatchedInferencePipeline if self.device.device == "cuda" else None
        self._local = threading.local()
        log.info(
            "model %s loaded on %s (%s) in %.1fs",
            self.model_name,
            self.device.device,
            self.device.compute_type,
            time.monotonic() - started,
        )

    def _batched(self) -> Any:
        if self._batched_class is None:
            return None
        if not hasattr(self._local, "pipeline"):
            self._local.pipeline = self._batched_class(self.model)
        return self._local.pipeline

    def transcribe(self, audio: np.ndarray, *, archive: str, member: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "language": self.config.language,
            "beam_size": self.config.beam_size,
            "temperature": list(parse_temperatures(self.config.temperatures)),
            "vad_filter": self.config.vad,
        }
        try:
            batched = self._batched()
            if batched is not None:
                segments, info = batched.transcribe(
                    audio, batch_size=min(16, self.config.process_batch_size), **options
                )
            else:
                segments, info = self.model.transcribe(audio, condition_on_previous_text=False, **options)
            segs = [
                {
                    "start": round(s.start, 3),
                    "end": round(s.end, 3),
                    "text": _clean_text(s.text),
                    "avg_logprob": s.avg_logprob,
                    "no_speech_prob": s.no_speech_prob,
                }
                for s in segments
            ]
        except Exception as exc:
            raise TranscriptionError(f"transcription failed: {exc}") from exc
        return {
            "text": " ".join(s["text"] for s in segs if s["text"]).strip(),
            "language": info.language,
            "language_probability": info.language_probability,
            "duration": info.duration,
            "segments": segs,
            "model": self.model_name,
            "archive": archive,
            "member": member,
        }

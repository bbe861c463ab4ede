"""faster-whisper, loaded once per job. `transcribe` is faster-whisper's own sequential path for
one file (the per-member decoder and the reference the batched decoder is measured against); the
batched decoder (batched.py) drives the same model directly (calls.py).

Language is detected per file unless configured: nothing of one file's decoding state (language,
previous text) is carried into the next.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, TranscriptionError
from ...model_folder import MANIFEST, ModelFolderError, missing_files
from ...transcript import Segment, Transcript, Word, clean_text
from .options import DecodeOptions, LoadOptions, Timestamps
from .policy import APPEND_PUNCTUATIONS, MAX_INITIAL_TIMESTAMP, PREPEND_PUNCTUATIONS, SAMPLE_RATE
from .protocol import Device
from .timing import speech_segments

log = logging.getLogger(__name__)


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

    A path that does not exist is an error, never a hub lookup: a typo must not start a download;
    a folder `get-model` wrote that lacks a file its manifest lists is one too.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        lacking = missing_files(path)
        if lacking:
            raise ModelFolderError(
                f"model directory {model} lacks {', '.join(lacking)}, which its {MANIFEST} lists "
                "(an incomplete copy: run get-model again)"
            )
        return path
    if "/" in model or model.startswith((".", "~")):
        raise ConfigError(f"model directory {model} does not exist")
    return None


class Transcriber:
    """A faster-whisper model loaded once (from what loading needs alone, as `WhisperModel`
    is), and its own sequential `transcribe` (called from the per-member decoder's threads)."""

    def __init__(self, options: LoadOptions) -> None:
        from faster_whisper import WhisperModel

        self.device = resolve_device(options.device, options.compute_type)
        model_dir = local_model_dir(options.model)
        started = time.monotonic()
        try:
            self.model = WhisperModel(
                str(model_dir) if model_dir else options.model,
                device=self.device.device,
                compute_type=self.device.compute_type,
                cpu_threads=options.cpu_threads,
                num_workers=options.workers,
                local_files_only=model_dir is not None or options.offline,
            )
        except Exception as exc:
            raise TranscriptionError(f"cannot load model {options.model!r}: {exc}") from exc
        self.model_name = model_dir.name if model_dir else options.model
        log.info(
            "model %s loaded on %s (%s) in %.1fs",
            self.model_name,
            self.device.device,
            self.device.compute_type,
            time.monotonic() - started,
        )

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions, *, archive: str, member: str
    ) -> Transcript:
        """faster-whisper's own path, decoded and timed as `options` ask (the per-member decoder)."""
        mode = options.timestamps
        kwargs: dict[str, Any] = {
            "language": options.language,
            "beam_size": options.beam_size,
            "temperature": list(options.temperatures),
            "vad_filter": options.vad,
            "max_new_tokens": options.max_new_tokens,
            "without_timestamps": mode is Timestamps.NONE,
            # `segment` is timed by its words as in the batched decoder, which are then dropped.
            "word_timestamps": mode is not Timestamps.NONE,
            "max_initial_timestamp": MAX_INITIAL_TIMESTAMP,
            "prepend_punctuations": PREPEND_PUNCTUATIONS,
            "append_punctuations": APPEND_PUNCTUATIONS,
        }
        try:
            segments, info = self.model.transcribe(audio, condition_on_previous_text=False, **kwargs)
            segs = [
                Segment(
                    s.start,
                    s.end,
                    clean_text(s.text),
                    s.avg_logprob,
                    s.no_speech_prob,
                    s.temperature,
                    s.compression_ratio,
                    [Word(w.start, w.end, w.word, w.probability) for w in s.words]
                    if s.words is not None
                    else None,
                    info.language,
                )
                for s in segments
            ]
        except Exception as exc:
            raise TranscriptionError(f"transcription failed: {exc}") from exc
        duration = len(audio) / SAMPLE_RATE
        return Transcript.of(
            speech_segments(segs, duration, keep_words=options.keep_words),
            archive=archive,
            member=member,
            model=self.model_name,
            language=info.language,
            language_probability=info.language_probability,
            duration=info.duration,
        )

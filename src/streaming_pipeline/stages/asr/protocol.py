"""What the rest of the package sees of speech recognition: a loaded model, a decoder, and the
decoder's figures. Stand-ins in tests implement the same surface."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from ...transcript import Provenance, Transcript
from .options import DecodeOptions, LoadOptions


@dataclass(frozen=True)
class Device:
    """Where a model runs: `cpu` or `cuda`, and its compute type (`auto`/`default` resolved)."""

    device: str
    compute_type: str


CPU = Device("cpu", "default")  # a stand-in transcriber's


class TranscriberLike(Protocol):
    """A loaded model: `loader.Transcriber`, or a stand-in with the same surface."""

    model_name: str
    device: Device

    def transcribe(self, audio: Any, options: DecodeOptions, *, archive: str, member: str) -> Transcript: ...


class TranscriberModel(TranscriberLike, Protocol):
    """What the batched decoder needs beyond `TranscriberLike`: the faster-whisper model itself."""

    model: Any  # faster_whisper.WhisperModel


@dataclass
class DecoderStats:
    """A decoder's figures over its life (the per-member decoder fills the first two only)."""

    decoder_busy_s: float = 0.0  # in model calls
    members: int = 0  # completed
    calls: int = 0  # generate calls
    rows: int = 0  # rows queued (continuations included)
    rows_decoded: int = 0  # row decodes, fallbacks included
    fallback_rows: int = 0  # decoded again at a higher temperature
    continued_rows: int = 0  # decoded again from where the model stopped short
    align_s: float = 0.0  # in cross-attention alignment
    prep_s: float = 0.0  # the prep threads' wall time
    vad_cpu_s: float = 0.0  # the prep threads' own CPU in Silero VAD
    features_cpu_s: float = 0.0  # and in the log-Mel features
    oom_halvings: int = 0  # calls split in two after CUDA ran out of memory

    def as_dict(self) -> dict[str, float]:
        """For logs and `bench --json`."""
        return asdict(self)


TranscriberFactory = Callable[[LoadOptions], TranscriberLike]  # loader.Transcriber, or a stand-in


class Decoder(Protocol):
    """Members in, transcripts out as futures; called from the run's threads, runs its own."""

    provenance: Provenance  # what its transcripts are made with
    device: Device  # where its model runs

    def submit(self, audio: np.ndarray, *, archive: str, member: str) -> Future[Transcript]: ...

    def cancel_pending(self) -> int: ...

    def stats(self) -> DecoderStats: ...

    def close(self) -> None: ...


def cancelled_future() -> Future[Transcript]:
    """What `submit` returns once the decoder is stopping: the member stays for the next run."""
    future: Future[Transcript] = Future()
    future.cancel()
    return future

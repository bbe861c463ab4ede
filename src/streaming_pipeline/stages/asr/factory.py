"""The decoder the options ask for, over a loaded model."""

from __future__ import annotations

from typing import cast

import numpy as np

from ...transcript import Transcript
from .batched import BatchedDecoder
from .options import DecodeOptions
from .per_member import PerMemberDecoder
from .protocol import Decoder, TranscriberLike, TranscriberModel


def open_decoder(transcriber: TranscriberLike, options: DecodeOptions) -> Decoder:
    """The batched decoder unless the options say per-member. A stand-in transcriber without a
    faster-whisper model (tests of the workers' bookkeeping) gets the per-member decoder."""
    model = getattr(transcriber, "model", None)
    if options.decoder == "batched" and model is not None:
        return BatchedDecoder(cast(TranscriberModel, transcriber), options)
    return PerMemberDecoder(transcriber, options)


def decode_all(
    decoder: Decoder, audio: list[np.ndarray], names: list[str], archive: str = "bench"
) -> list[Transcript]:
    """Every clip through `decoder`, results in order (the benchmark's floor and the tests)."""
    futures = [decoder.submit(a, archive=archive, member=n) for a, n in zip(audio, names, strict=True)]
    return [f.result() for f in futures]

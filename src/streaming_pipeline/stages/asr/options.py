"""What the decoders are told, built once per run from the settings (faster-whisper's frozen
`TranscriptionOptions` does the same) out of the decode group of the settings: no decoder
reads the settings itself, the temperatures
are parsed here and nowhere else, and the model loader gets only what loading needs."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import DecodeSettings, Timestamps, parse_temperatures

__all__ = ["DecodeOptions", "LoadOptions", "Timestamps"]


@dataclass(frozen=True)
class LoadOptions:
    """How the model is loaded (faster-whisper's `WhisperModel` arguments), nothing of decoding."""

    model: str  # a hub name or a local CTranslate2 directory
    device: str  # auto, cuda, cpu
    compute_type: str  # default: float16 on GPU, int8 on CPU
    cpu_threads: int
    workers: int  # CTranslate2 workers: the per-member decoder's threads
    offline: bool

    @classmethod
    def of(cls, config: DecodeSettings) -> LoadOptions:
        return cls(
            model=config.model,
            device=config.device,
            compute_type=config.compute_type,
            cpu_threads=config.cpu_threads,
            workers=config.transcribe_workers,
            offline=config.offline,
        )


def keep_words(timestamps: Timestamps, *, speakers: bool) -> bool:
    """Whether a transcript keeps its words: asked for (`word`), or timed by them (`segment`) for
    the speaker stage, which gives each word its speaker and drops them after."""
    return timestamps is Timestamps.WORD or (speakers and timestamps is Timestamps.SEGMENT)


@dataclass(frozen=True)
class DecodeOptions:
    """How members are decoded, and with which model (built once per run, passed down)."""

    load: LoadOptions
    decoder: str  # batched or per-member (`auto` resolved: the batched decoder everywhere)
    beam_size: int
    temperatures: tuple[float, ...]
    vad: bool
    timestamps: Timestamps
    keep_words: bool  # the transcript keeps its words: `--timestamps word`, or speakers attribute them
    language: str | None  # forced, or None: detected
    max_new_tokens: int | None
    decode_batch_size: int  # rows per generate call; 0: the device's default
    members_in_flight: int  # members the batched decoder holds at once (--process-batch-size)
    workers: int  # per-member decoding threads; the batched decoder's prep threads at least

    @property
    def model(self) -> str:
        return self.load.model

    @classmethod
    def of(cls, config: DecodeSettings) -> DecodeOptions:
        return cls(
            load=LoadOptions.of(config),
            # `auto` is the batched decoder everywhere: on CPU it was not slower (docs, Performance).
            decoder="batched" if config.decoder == "auto" else config.decoder,
            beam_size=config.beam_size,
            temperatures=parse_temperatures(config.temperatures),
            vad=config.vad,
            timestamps=Timestamps(config.timestamps),
            keep_words=keep_words(Timestamps(config.timestamps), speakers=config.speakers),
            language=config.language,
            max_new_tokens=config.max_new_tokens,
            decode_batch_size=config.decode_batch_size,
            members_in_flight=config.process_batch_size,
            workers=config.transcribe_workers,
        )

"""What the decoders are told, built once from the settings (faster-whisper's frozen
`TranscriptionOptions` does the same): no decoder reads `PipelineConfig` itself, and the
temperatures are parsed here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import PipelineConfig, parse_temperatures


@dataclass(frozen=True)
class DecodeOptions:
    """How a model is loaded and how members are decoded with it."""

    model: str  # a hub name or a local CTranslate2 directory
    device: str  # auto, cuda, cpu
    compute_type: str  # default: float16 on GPU, int8 on CPU
    cpu_threads: int
    offline: bool
    decoder: str  # batched or per-member (`auto` resolved: the batched decoder everywhere)
    beam_size: int
    temperatures: tuple[float, ...]
    vad: bool
    timestamps: str  # none, segment, word
    language: str | None  # forced, or None: detected
    max_new_tokens: int | None
    decode_batch_size: int  # rows per generate call; 0: the device's default
    members_in_flight: int  # members the batched decoder holds at once (--process-batch-size)
    workers: int  # per-member decoding threads; the batched decoder's prep threads at least

    @classmethod
    def of(cls, config: PipelineConfig) -> DecodeOptions:
        return cls(
            model=config.model,
            device=config.device,
            compute_type=config.compute_type,
            cpu_threads=config.cpu_threads,
            offline=config.offline,
            # `auto` is the batched decoder everywhere: on CPU it was not slower (docs, Performance).
            decoder="batched" if config.decoder == "auto" else config.decoder,
            beam_size=config.beam_size,
            temperatures=parse_temperatures(config.temperatures),
            vad=config.vad,
            timestamps=config.timestamps,
            language=config.language,
            max_new_tokens=config.max_new_tokens,
            decode_batch_size=config.decode_batch_size,
            members_in_flight=config.process_batch_size,
            workers=config.transcribe_workers,
        )

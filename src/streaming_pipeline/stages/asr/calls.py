"""The model's calls over the rows of one batch: encode, detect the language, generate, align.

No threads and no bookkeeping: `batched.BatchedDecoder` calls these from its decode thread and
decides what the results mean (policy.py, timing.py). The tokenizers, one per language, are made
once and kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import ConfigError
from .options import DecodeOptions, Timestamps
from .policy import MAX_INITIAL_TIMESTAMP_INDEX
from .timing import words_from_alignment

# faster-whisper's sampling at a fallback temperature: the best of this many.
BEST_OF = 5
# CTranslate2's median filter over the alignment heads' attention (faster-whisper's default).
MEDIAN_FILTER_WIDTH = 7


class WhisperCalls:
    """One faster-whisper model's CTranslate2 calls, with the options they are made with."""

    def __init__(self, whisper: Any, options: DecodeOptions) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.whisper = whisper  # faster_whisper.WhisperModel
        self.ct2 = whisper.model  # ctranslate2.models.Whisper
        self.multilingual = bool(self.ct2.is_multilingual)
        self._options = options
        self._tokenizer_class = Tokenizer
        self._tokenizers: dict[str | None, Any] = {}
        self.text = self.tokenizer(None if not self.multilingual else "en")  # tokens -> text
        self._suppress = list(get_suppressed_tokens(self.text, [-1]))
        if options.language is not None and self.multilingual:
            self.tokenizer(options.language)  # an unknown code is an error now, not per member

    def tokenizer(self, language: str | None) -> Any:
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            try:
                tokenizer = self._tokenizer_class(
                    self.whisper.hf_tokenizer, self.multilingual, task="transcribe", language=language
                )
            except ValueError as exc:
                raise ConfigError(f"language: {exc}") from None
            self._tokenizers[language] = tokenizer
        return tokenizer

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Log-Mel features of one row's samples; as BatchedInferencePipeline, the extractor's
        frame past the audio dropped."""
        return self.whisper.feature_extractor(samples)[..., :-1]

    def encode(self, features: Sequence[np.ndarray]) -> Any:
        """The encoder's output for rows of features, each padded to 30 s."""
        from faster_whisper.audio import pad_or_trim

        return self.whisper.encode(np.stack([pad_or_trim(f) for f in features]))

    def detect(self, encoded: Any) -> list[tuple[str, float]]:
        """Each row's most likely language, with its probability."""
        return [(token[2:-2], probability) for (token, probability), *_ in self.ct2.detect_language(encoded)]

    def generate(self, encoded: Any, languages: Sequence[str | None], temperature: float) -> list[Any]:
        """One `generate` call: beam search at temperature 0, else the best of `BEST_OF` samples."""
        prompts = [self.prompt(language) for language in languages]
        max_length = self.whisper.max_length
        if self._options.max_new_tokens is not None:
            max_length = min(max_length, len(prompts[0]) + self._options.max_new_tokens)
        if temperature > 0:
            sampling: dict[str, Any] = {
                "beam_size": 1,
                "num_hypotheses": BEST_OF,
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        else:
            sampling = {"beam_size": self._options.beam_size, "patience": 1}
        return list(
            self.ct2.generate(
                encoded,
                prompts,
                length_penalty=1,
                repetition_penalty=1,
                no_repeat_ngram_size=0,
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
                suppress_blank=True,
                suppress_tokens=self._suppress,
                **sampling,
            )
        )

    def align(
        self,
        encoded: Any,
        indices: list[int],
        total: int,
        language: str | None,
        text_tokens: list[list[int]],
        frames: list[int],
    ) -> list[list[dict[str, Any]]]:
        """Words (timing.words_from_alignment's) of some rows of a call that share a start
        sequence, from the call's encoder output: one `align` call."""
        tokenizer = self.tokenizer(language if self.multilingual else None)
        results = self.ct2.align(
            _rows_of(encoded, indices, total),
            list(tokenizer.sot_sequence),
            text_tokens,
            frames,
            median_filter_width=MEDIAN_FILTER_WIDTH,
        )
        out = []
        for tokens, result in zip(text_tokens, results, strict=True):
            words, word_tokens = tokenizer.split_to_word_tokens([*tokens, tokenizer.eot])
            out.append(words_from_alignment(words, word_tokens, result.alignments, result.text_token_probs))
        return out

    def prompt(self, language: str | None) -> list[int]:
        """[sot, language, transcribe] (+ notimestamps with `--timestamps none`): one layout for
        every row of a call, as CTranslate2 needs."""
        tokenizer = self.tokenizer(language if self.multilingual else None)
        if self._options.timestamps is Timestamps.NONE:
            return [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        return list(tokenizer.sot_sequence)


def _rows_of(encoded: Any, indices: list[int], total: int) -> Any:
    """The encoder output of some rows of a call (for `align`, which takes one start sequence):
    the call's own output when all rows share it, else a copy of those rows (through host memory
    on a GPU; CTranslate2 moves it back to the model's device)."""
    import ctranslate2

    if indices == list(range(total)):
        return encoded
    if encoded.device != "cpu":
        encoded = encoded.to_device(ctranslate2.Device.cpu)
    rows = np.ascontiguousarray(np.asarray(encoded)[indices])
    return ctranslate2.StorageView.from_array(rows)

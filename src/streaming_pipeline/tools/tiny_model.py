"""Generate a tiny random-weight Whisper model in CTranslate2 format.

No model can be downloaded in CI or on air-gapped nodes, yet the tests and the demo must run the
real faster-whisper code path. This writes a structurally complete multilingual Whisper (full
51865-token vocabulary, 99 language tokens, timestamps, a byte-level BPE tokenizer.json with
Whisper's special tokens) whose weights are random. Its transcripts are noise; only their
structure means anything.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

N_MELS = 80
ENCODER_POSITIONS = 1500
DECODER_POSITIONS = 448
TEXT_TOKENS = 50257  # ids 0..50256, as in Whisper's multilingual tokenizer
TIMESTAMP_TOKENS = 1501  # <|0.00|> .. <|30.00|>
# Whisper v2 language order (the id of <|xx|> is 50259 + index).
LANGUAGES = """
en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th
ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr
pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt
haw ln ha ba jw su
""".split()
SPECIAL_BEFORE_LANGUAGES = ("<|endoftext|>", "<|startoftranscript|>")
SPECIAL_AFTER_LANGUAGES = (
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _text_vocabulary() -> list[str]:
    """256 byte symbols, two-symbol merges, and a final empty token.

    The empty token matters: CTranslate2 4.8 calls a Whisper model multilingual (and only then
    allows language detection) when its vocabulary contains "", as OpenAI's multilingual one does.
    """
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols[:]
    for a, b in itertools.product(symbols, repeat=2):
        if len(tokens) == TEXT_TOKENS - 1:
            break
        tokens.append(a + b)
    tokens.append("")
    return tokens


def special_tokens() -> list[str]:
    return [
        *SPECIAL_BEFORE_LANGUAGES,
        *(f"<|{code}|>" for code in LANGUAGES),
        *SPECIAL_AFTER_LANGUAGES,
    ]


def _write_tokenizer(path: Path, text_tokens: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(text_tokens)}
    merges = [(t[0], t[1]) for t in text_tokens[256:] if len(t) == 2]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(special_tokens())
    tokenizer.save(str(path))


def _fill_attention(spec: Any, rng: np.random.Generator, d: int, fused: int) -> None:
    """fused: 3 for self-attention (qkv in one matrix), 2 for cross-attention (q, then kv)."""
    _norm(spec.layer_norm, d)
    linears = spec.linear
    if fused == 3:
        _linear(linears[0], rng, 3 * d, d)
        _linear(linears[1], rng, d, d)
    else:
        _linear(linears[0], rng, d, d)
        _linear(linears[1], rng, 2 * d, d)
        _linear(linears[2], rng, d, d)


def _fill_ffn(spec: Any, rng: np.random.Generator, d: int) -> None:
    _norm(spec.layer_norm, d)
    _linear(spec.linear_0, rng, 4 * d, d)
    _linear(spec.linear_1, rng, d, 4 * d)


def _linear(spec: Any, rng: np.random.Generator, out_dim: int, in_dim: int) -> None:
    spec.weight = (rng.standard_normal((out_dim, in_dim)) / np.sqrt(in_dim)).astype(np.float32)
    spec.bias = np.zeros(out_dim, dtype=np.float32)


def _norm(spec: Any, d: int) -> None:
    spec.gamma = np.ones(d, dtype=np.float32)
    spec.beta = np.zeros(d, dtype=np.float32)


def generate_tiny_model(
    output_dir: Path,
    *,
    d_model: int = 32,
    layers: int = 1,
    heads: int = 2,
    seed: int = 0,
    eot_bias: float = 3.0,
    timestamp_bias: float = -4.0,
) -> Path:
    """Write model.bin, config.json, vocabulary.json, tokenizer.json and preprocessor_config.json."""
    from ctranslate2.specs import whisper_spec

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    d = d_model
    text_tokens = _text_vocabulary()
    vocabulary = text_tokens + special_tokens()
    vocabulary += [f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMP_TOKENS)]

    spec = whisper_spec.WhisperSpec(layers, heads, layers, heads)
    _fill_encoder(spec.encoder, rng, d)
    _fill_decoder(spec.decoder, rng, d, len(vocabulary), eot_bias=eot_bias, timestamp_bias=timestamp_bias)
    eot = TEXT_TOKENS
    lang_ids = [vocabulary.index(f"<|{code}|>") for code in LANGUAGES]
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = [220, eot]
    spec.config.lang_ids = lang_ids
    spec.config.alignment_heads = [(layers - 1, h) for h in range(heads)]
    spec.register_vocabulary(vocabulary)
    spec.validate()
    spec.optimize(quantization="int8")
    spec.save(str(output_dir))

    _write_tokenizer(output_dir / "tokenizer.json", text_tokens)
    preprocessor = {
        "feature_size": N_MELS,
        "sampling_rate": 16000,
        "hop_length": 160,
        "chunk_length": 30,
        "n_fft": 400,
    }
    (output_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    log.info("wrote tiny random Whisper model to %s", output_dir)
    return output_dir


def _fill_encoder(enc: Any, rng: np.random.Generator, d: int) -> None:
    enc.conv1.weight = (rng.standard_normal((d, N_MELS, 3)) / np.sqrt(3 * N_MELS)).astype(np.float32)
    enc.conv1.bias = np.zeros(d, dtype=np.float32)
    enc.conv2.weight = (rng.standard_normal((d, d, 3)) / np.sqrt(3 * d)).astype(np.float32)
    enc.conv2.bias = np.zeros(d, dtype=np.float32)
    enc.position_encodings.encodings = (0.1 * rng.standard_normal((ENCODER_POSITIONS, d))).astype(np.float32)
    _norm(enc.layer_norm, d)
    for layer in enc.layer:
        _fill_attention(layer.self_attention, rng, d, fused=3)
        _fill_ffn(layer.ffn, rng, d)


def _fill_decoder(
    dec: Any, rng: np.random.Generator, d: int, vocab_size: int, *, eot_bias: float, timestamp_bias: float
) -> None:
    dec.embeddings.weight = rng.standard_normal((vocab_size, d)).astype(np.float32)
    dec.position_encodings.encodings = (0.1 * rng.standard_normal((DECODER_POSITIONS, d))).astype(np.float32)
    _norm(dec.layer_norm, d)
    _linear(dec.projection, rng, vocab_size, d)
    # Random logits never favour <|endoftext|>, so every window would decode to the length cap
    # through all temperature fallbacks. A bias keeps noise transcripts short and tests fast.
    dec.projection.bias[TEXT_TOKENS] = eot_bias
    # With timestamps on, a window whose timestamp tokens together outweigh the likeliest text
    # token must emit a timestamp: 1501 random timestamp logits always do, and every window would
    # decode to a lone timestamp and no text. Pulled down, they only sometimes win, so noise
    # transcripts have text and, now and then, timestamp pairs that split a window.
    dec.projection.bias[vocab_size - TIMESTAMP_TOKENS :] = timestamp_bias
    for layer in dec.layer:
        _fill_attention(layer.self_attention, rng, d, fused=3)
        _fill_attention(layer.attention, rng, d, fused=2)
        _fill_ffn(layer.ffn, rng, d)

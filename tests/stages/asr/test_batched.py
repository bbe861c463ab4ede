"""The batched decoder: windows of many members in shared generate calls, with faster-whisper's guards.

The tiny random model checks structure and batching (its text is noise, but it is deterministic
when decoded greedily); the `realmodel` tests check words and languages with real Whisper weights.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import pytest
import soundfile as sf
import soxr
from faster_whisper.audio import decode_audio

from streaming_pipeline.config import PipelineConfig
from streaming_pipeline.stages.asr.batched import BatchedDecoder
from streaming_pipeline.stages.asr.factory import decode_all, open_decoder
from streaming_pipeline.stages.asr.loader import Transcriber
from streaming_pipeline.stages.asr.options import DecodeOptions, LoadOptions
from streaming_pipeline.stages.asr.policy import LOG_PROB_THRESHOLD, NO_SPEECH_THRESHOLD
from streaming_pipeline.stages.asr.protocol import DecoderStats
from streaming_pipeline.tools.samples import clip_files
from streaming_pipeline.transcript import Transcript

# The decoder alone: without the speaker stage (which keeps the words for itself, then drops them).
from ...conftest import RESULT_FIELDS, SEGMENT_FIELDS

RATE = 16000


def to_16k(data: bytes) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return soxr.resample(samples.mean(axis=1), rate, RATE).astype(np.float32)


@pytest.fixture(scope="module")
def members() -> tuple[list[str], list[np.ndarray]]:
    """Six short clips, and one long member of speech and pauses that VAD cuts into several rows."""
    clips = [(name, to_16k(data)) for name, data in clip_files(6)]
    pause = np.zeros(3 * RATE, dtype=np.float32)
    long = np.concatenate([part for _, audio in clips * 4 for part in (audio, pause)])
    names = [name for name, _ in clips] + ["long.wav"]
    return names, [audio for _, audio in clips] + [long]


def _config(model: Path, **overrides: Any) -> PipelineConfig:
    settings: dict[str, Any] = {
        "model": str(model),
        "device": "cpu",
        "beam_size": 1,
        "temperatures": "0",
        "max_new_tokens": 24,
    }
    return PipelineConfig(**{"speakers": False, **settings, **overrides})


def _decode(
    transcriber: Transcriber, config: PipelineConfig, names, audio
) -> tuple[list[Transcript], DecoderStats]:
    decoder = open_decoder(transcriber, DecodeOptions.of(config.decode))
    try:
        assert isinstance(decoder, BatchedDecoder)
        return decode_all(decoder, audio, names), decoder.stats()
    finally:
        decoder.close()


def test_batches_of_one_and_of_n_give_identical_text(tiny_model: Path, members) -> None:
    names, audio = members
    config = _config(tiny_model)
    transcriber = Transcriber(LoadOptions.of(config.decode))
    one, one_stats = _decode(
        transcriber, PipelineConfig(**{**config.__dict__, "decode_batch_size": 1}), names, audio
    )
    many, many_stats = _decode(
        transcriber, PipelineConfig(**{**config.__dict__, "decode_batch_size": 8}), names, audio
    )

    assert one_stats.rows == many_stats.rows > len(names), "the long member is several rows"
    assert one_stats.calls == one_stats.rows
    assert many_stats.calls < one_stats.calls / 2, "rows of different members share calls"
    for name, a, b in zip(names, one, many, strict=True):
        assert a.member == b.member == name
        assert (a.text, a.language, a.segments) == (b.text, b.language, b.segments)
    long = many[-1]
    assert len(long.segments) > 1
    starts = [s.start for s in long.segments]
    assert starts == sorted(starts) and long.segments[-1].end <= long.duration + 0.01
    # Segments are in the member's own timeline: the pauses between clips are kept.
    assert long.segments[-1].end > 0.8 * long.duration


def test_results_have_the_per_member_layout(tiny_model: Path, members) -> None:
    names, audio = members
    config = _config(tiny_model, decode_batch_size=4)
    (result,), _ = _decode(Transcriber(LoadOptions.of(config.decode)), config, names[:1], audio[:1])
    assert set(result.as_json()) == RESULT_FIELDS
    assert abs(result.duration - len(audio[0]) / RATE) < 1e-6
    assert len(result.language) in (2, 3) and 0 < result.language_probability <= 1
    for seg in result.segments:
        assert set(seg.as_json()) == SEGMENT_FIELDS
        assert 0 <= seg.start <= seg.end <= result.duration + 0.01


def test_silence_and_noise_have_no_rows_and_an_empty_transcript(tiny_model: Path) -> None:
    config = _config(tiny_model, decode_batch_size=4)
    rng = np.random.default_rng(7)
    silence = np.zeros(20 * RATE, dtype=np.float32)
    noise = (0.1 * rng.standard_normal(20 * RATE)).astype(np.float32)
    transcriber = Transcriber(LoadOptions.of(config.decode))
    results, stats = _decode(transcriber, config, ["silence.wav", "noise.wav"], [silence, noise])
    assert stats.rows == 0
    for result in results:
        assert result.text == "" and result.segments == ()
        assert result.language is None and result.duration == 20.0


def test_rows_that_fail_the_guards_are_decoded_again_batched_at_each_temperature(
    tiny_model: Path, members
) -> None:
    """The random model fails the log-probability guard on every row at temperature 0 (greedy, so
    always: its average log probability is far below -1 and its no-speech probability near 0), so
    each row is decoded again at 0.5, and those failing again at 1; the failures of different
    members share calls. Above 0 the decode samples, so now and then a row's sample passes (as
    silence: a high no-speech probability); the counts allow that and nothing else."""
    names, audio = members
    config = _config(tiny_model, decode_batch_size=8, temperatures="0,0.5,1")
    results, stats = _decode(Transcriber(LoadOptions.of(config.decode)), config, names, audio)
    assert stats.rows_decoded == stats.rows + stats.fallback_rows
    assert stats.rows <= stats.fallback_rows <= 2 * stats.rows
    assert stats.fallback_rows > 1.5 * stats.rows, "most rows fail at 0.5 too"
    assert stats.calls < stats.rows_decoded / 3
    for result in results:
        for seg in result.segments:
            assert seg.temperature in (0.0, 0.5, 1.0) and seg.avg_logprob < -1


class _OutOfMemoryAbove:
    """Stands in for CTranslate2 on a GPU that runs out of memory above `rows` rows per call:
    a CUDA out-of-memory error cannot be produced on a CPU. Everything else is the real model."""

    def __init__(self, real: Any, rows: int) -> None:
        self.real, self.rows, self.refused = real, rows, 0

    def generate(self, encoded: Any, prompts: list[list[int]], **kwargs: Any) -> Any:
        if len(prompts) > self.rows:
            self.refused += 1
            raise RuntimeError("CUDA failed with error out of memory")
        return self.real.generate(encoded, prompts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_out_of_memory_halves_the_batch_and_fails_no_member(tiny_model: Path, members, caplog) -> None:
    names, audio = members
    config = _config(tiny_model, decode_batch_size=8)
    transcriber = Transcriber(LoadOptions.of(config.decode))
    expected, _ = _decode(transcriber, config, names, audio)

    decoder = BatchedDecoder(transcriber, DecodeOptions.of(config.decode))
    # Every call full (8 rows, or all there are): on a loaded machine a call that stopped waiting
    # for the prep threads could hold 2 rows or fewer and never meet the out-of-memory limit.
    decoder.fill_wait_s = 600.0
    fake = decoder._calls.ct2 = _OutOfMemoryAbove(decoder._calls.ct2, rows=2)
    try:
        results = decode_all(decoder, audio, names)
        stats = decoder.stats()
    finally:
        decoder.close()
    assert [r.text for r in results] == [r.text for r in expected]
    assert fake.refused >= 2 and stats.oom_halvings == fake.refused
    assert decoder._limit == 2
    warnings = [r for r in caplog.records if "out of GPU memory" in r.getMessage()]
    assert len(warnings) == 1, "logged once"


def test_a_stop_cancels_what_is_not_decoded(tiny_model: Path, members) -> None:
    names, audio = members
    config = _config(
        tiny_model, decode_batch_size=2, process_batch_size=50, temperatures="0,0.2,0.4,0.6,0.8,1"
    )
    decoder = BatchedDecoder(Transcriber(LoadOptions.of(config.decode)), DecodeOptions.of(config.decode))
    futures = [decoder.submit(a, archive="a", member=n) for a, n in zip(audio * 3, names * 3, strict=True)]
    futures[0].result()
    cancelled = decoder.cancel_pending()
    decoder.close()
    assert cancelled > 0
    assert all(f.done() for f in futures), "nothing is left waiting"
    # Members whose rows were in the running call finish, unless a row needed another
    # temperature: then they are cancelled too (no more calls after a stop).
    assert cancelled <= sum(f.cancelled() for f in futures) < len(futures)
    assert not futures[0].cancelled()
    late = decoder.submit(audio[0], archive="a", member="late.wav")
    assert late.cancelled()


@pytest.mark.gpu
def test_cuda_float16_packs_members_into_shared_calls(tiny_model: Path, members) -> None:
    names, audio = members
    config = _config(tiny_model, device="cuda", decode_batch_size=16)
    transcriber = Transcriber(LoadOptions.of(config.decode))
    assert (transcriber.device.device, transcriber.device.compute_type) == ("cuda", "float16")
    results, stats = _decode(transcriber, config, names, audio)
    assert [r.member for r in results] == names
    assert stats.rows_decoded / stats.calls > 1 and stats.oom_halvings == 0
    assert all(r.language for r in results)


# -- real Whisper weights ----------------------------------------------------------------------

SCORED_FROM_EXCLUDED = ("whisper-base output", "none", "test only", "tiny output", "MIT licence")


def _manifest(realspeech: Path) -> list[dict[str, str]]:
    lines = (realspeech / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line.strip()]


def _normalise(text: str) -> str:
    import re

    return " ".join(re.sub(r"[^\w\s']|_", " ", text.lower()).replace("'", " ").split())


def _wer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return 100.0 * jiwer.wer(references, [h or "<empty>" for h in hypotheses])


@pytest.mark.realmodel
@pytest.mark.slow
def test_real_speech_archive_word_error_rate_and_languages(
    tmp_path: Path, pg_dsn: str, realspeech: Path, whisper_base: Path, capsys
) -> None:
    """All the recorded speech in one archive (ten formats, English, French and Chinese, members
    sharing a stem) through process-tar with the batched decoder: every member soundfile or PyAV
    can decode is done (the headerless raw PCM is the one failure), each member's language is its
    own, and English WER is within 1 point of faster-whisper's own transcribe on the same audio
    (same model, beam 5, VAD on)."""
    import psycopg
    from faster_whisper import WhisperModel

    from streaming_pipeline.cli import main
    from streaming_pipeline.tools.samples import write_tar_xz

    rows = _manifest(realspeech)
    assert len(rows) == 49
    archive = write_tar_xz(
        tmp_path / "input" / "2025-01-25" / "09_00.tar.xz",
        [(f"speech/{r['file']}", (realspeech / "audio" / r["file"]).read_bytes()) for r in rows],
    )
    remote = tmp_path / "remote"
    rc = main([
        "process-tar", "2025-01-25", str(archive), "09_00", "--dsn", pg_dsn, "--remote", str(remote),
        "--scratch-dir", str(tmp_path / "scratch"), "--model", str(whisper_base), "--device", "cpu",
        "--beam-size", "5", "--temperatures", "0.0,0.2,0.4,0.6,0.8,1.0", "--decoder", "batched",
        "--decode-batch-size", "8", "--stream-batch-size", "16", "--num-workers", "2",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    with psycopg.connect(pg_dsn, row_factory=psycopg.rows.dict_row) as conn:
        db = {r["member"]: r for r in conn.execute("SELECT * FROM audio_files")}
    raw = "speech/ps_goforward.raw"
    assert {m: r["status"] for m, r in db.items()} == {
        f"speech/{r['file']}": "failed" if f"speech/{r['file']}" == raw else "done" for r in rows
    }
    assert db[raw]["error"].startswith("no header: sample rate unknown")
    assert db["speech/jfk_stereo44k.m4a"]["audio_reader"] == "pyav"
    same_stem = [db[f"speech/sv_test{suffix}"]["remote_path"] for suffix in (".mp3", ".opus", ".wav")]
    assert len(set(same_stem)) == 3, "members sharing a stem each come out"

    reference_model = WhisperModel(str(whisper_base), device="cpu", compute_type="int8")
    refs, ours, theirs = [], [], []
    for row in rows:
        member = db[f"speech/{row['file']}"]
        expected = {"en+de": "en"}.get(row["language"], row["language"])
        if expected in ("en", "fr", "zh") and member["status"] == "done":
            assert member["language"] == expected, (
                f"{row['file']}: detected {member['language']}, spoken {expected}"
            )
        scored = (
            row["language"] == "en"
            and row["reference"]
            and not any(x in row["reference_from"] for x in SCORED_FROM_EXCLUDED)
        )
        if not scored or member["status"] != "done":
            continue
        flac = remote / member["remote_path"].removeprefix(str(remote) + "/")
        audio, rate = sf.read(str(flac), dtype="float32")
        assert rate == 16000
        segments, _ = reference_model.transcribe(audio, beam_size=5, vad_filter=True)
        refs.append(_normalise(row["reference"]))
        ours.append(_normalise(member["transcript"]))
        theirs.append(_normalise(" ".join(s.text for s in segments)))
    assert len(refs) >= 30
    _check_timed_outputs(remote, db)
    ours_wer, theirs_wer = _wer(refs, ours), _wer(refs, theirs)
    print(
        f"English WER on {len(refs)} files: batched decoder {ours_wer:.2f}%, faster-whisper {theirs_wer:.2f}%"
    )
    assert ours_wer <= theirs_wer + 1.0, (ours_wer, theirs_wer)


def _check_timed_outputs(remote: Path, db: dict[str, dict]) -> None:
    """`--timestamps segment` (the default): sentence-sized segments inside each member, and an
    SRT beside each member with speech that `srt` reads back as the transcript, word for word."""
    import json

    import srt

    lengths = []
    for member in (m for m in db.values() if m["status"] == "done"):
        flac = remote / member["remote_path"].removeprefix(str(remote) + "/")
        result = Transcript.from_json(json.loads(flac.with_suffix(".json").read_text(encoding="utf-8")))
        _check_times(result, member["duration_s"] + 1e-3)
        lengths += [s.end - s.start for s in result.segments]
        subtitles = flac.with_suffix(".srt")
        assert subtitles.is_file() == bool(result.text), member["member"]
        assert member["subtitles"] == ("srt,rttm" if result.text else "rttm")  # and its speaker turns
        if result.text:
            cues = list(srt.parse(subtitles.read_text(encoding="utf-8")))
            # the cues' text is the transcript's, word for word, but for the speaker named where it changes
            content = [re.sub(r"^S\d+: ", "", c.content) for c in cues]
            lines = " ".join(line for c in content for line in c.split("\n"))
            assert "".join(lines.split()) == "".join(result.text.split()), member["member"]
            if result.language not in ("zh", "ja"):
                assert lines.split() == result.text.split(), member["member"]
    median = float(np.median(lengths))
    print(f"segments: {len(lengths)}, median {median:.2f} s, longest {max(lengths):.2f} s")
    assert median <= 12.0, sorted(lengths)


@pytest.mark.realmodel
def test_real_model_leaves_silence_and_noise_empty_without_vad(whisper_base: Path) -> None:
    """With VAD off every window reaches the model: the no-speech rule and the fallback guards,
    not VAD, keep silence, mains hum and white noise empty (faster-whisper's transcribe too).

    Not always: the fallback samples (temperature > 0, CTranslate2's random generator), and a
    sampled decode that scores above the log-prob threshold overrides a high no-speech
    probability, in faster-whisper as here. Measured on this machine: one clip of the three came
    out as words in about 1 run in 40 ("1 oz. 1 oz. …" at temperature 0.6, no-speech 0.82,
    log-prob -0.68), and two of three once. So: at most one clip, and only through that rule, with
    CTranslate2's generator seeded so that the test does not depend on the draw."""
    ctranslate2.set_random_seed(20251125)
    config = PipelineConfig(
        speakers=False, model=str(whisper_base), device="cpu", vad=False, decode_batch_size=4
    )
    rng = np.random.default_rng(7)
    clips = {
        "silence": np.zeros(20 * RATE, dtype=np.float32),
        "hum": (0.2 * np.sin(2 * np.pi * 50 * np.arange(20 * RATE) / RATE)).astype(np.float32),
        "white": (0.1 * rng.standard_normal(20 * RATE)).astype(np.float32),
    }
    results, stats = _decode(
        Transcriber(LoadOptions.of(config.decode)), config, list(clips), list(clips.values())
    )
    assert stats.rows == 3 and stats.calls >= 1
    assert sum(bool(r.text) for r in results) <= 1, [r.text for r in results]
    for segment in (s for r in results for s in r.segments):
        assert segment.no_speech_prob <= NO_SPEECH_THRESHOLD or segment.avg_logprob > LOG_PROB_THRESHOLD


class _FailsFirstCall:
    """Stands in for CTranslate2 failing one call in a way it does not announce (a driver error):
    the real model otherwise."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def generate(self, encoded: Any, prompts: list[list[int]], **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.real.generate(encoded, prompts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_failed_call_fails_its_members_alone_and_decoding_goes_on(tiny_model: Path, members) -> None:
    from streaming_pipeline.errors import TranscriptionError

    names, audio = members
    config = _config(tiny_model, decode_batch_size=2)
    decoder = BatchedDecoder(Transcriber(LoadOptions.of(config.decode)), DecodeOptions.of(config.decode))
    decoder._calls.ct2 = _FailsFirstCall(decoder._calls.ct2)
    try:
        futures = [decoder.submit(a, archive="a", member=n) for a, n in zip(audio, names, strict=True)]
        outcomes = [f.exception(timeout=60) for f in futures]
    finally:
        decoder.close()
    failed = [e for e in outcomes if e is not None]
    assert 1 <= len(failed) <= 2, "the members of the first call"
    assert all(isinstance(e, TranscriptionError) and "illegal memory access" in str(e) for e in failed)
    assert sum(e is None for e in outcomes) == len(names) - len(failed)


def _recording(realspeech: Path, name: str) -> np.ndarray:
    samples, rate = sf.read(str(realspeech / "audio" / name), dtype="float32", always_2d=True)
    return soxr.resample(samples.mean(axis=1), rate, RATE).astype(np.float32)


def _timed_members(realspeech: Path) -> dict[str, np.ndarray]:
    """Members whose windows end in every way: ~1 s; just under one 30 s window; just over it (a
    second window of ~1 s); and three minutes of recordings between long silences, which VAD
    removes and every time has to be mapped back across."""
    english = [
        "fw_jfk.flac",
        "ps_sense_and_sensibility_01_austen_64kb-0870.wav",
        "sb_LJ050-0131.wav",
        "ps_sense_and_sensibility_01_austen_64kb-0920.wav",
        "ps_sense_and_sensibility_01_austen_64kb-0890.wav",
        "ps_sense_and_sensibility_01_austen_64kb-0930.wav",
    ]
    clips = [_recording(realspeech, name) for name in english]
    gap = np.zeros(RATE // 2, dtype=np.float32)

    def joined(seconds: float) -> np.ndarray:
        parts: list[np.ndarray] = []
        for clip in clips * 3:
            if sum(map(len, parts)) + len(clip) > seconds * RATE:
                break
            parts += [clip, gap]
        audio = np.concatenate(parts)
        return np.pad(audio, (0, max(0, int(seconds * RATE) - len(audio))))

    silence = [np.zeros(int(s * RATE), dtype=np.float32) for s in (25, 40, 31, 47, 20)]
    long = np.concatenate(
        [part for clip, pause in zip(clips[:5], silence, strict=True) for part in (pause, clip)]
    )
    return {
        "one_second.wav": _recording(realspeech, "ps_cards_001.wav"),
        "window_minus.wav": joined(29.5),
        "window_plus.wav": joined(31.0),
        "minutes_with_silences.wav": np.concatenate([long, np.zeros(15 * RATE, dtype=np.float32)]),
    }


def _check_times(result: Transcript, duration: float) -> None:
    previous_end = 0.0
    for seg in result.segments:
        assert previous_end <= seg.start <= seg.end <= duration, (result.member, seg)
        previous_end = seg.end
        last = seg.start
        for word in seg.words or ():
            assert last <= word.start <= word.end <= seg.end, (result.member, seg, word)
            last = word.start


@pytest.mark.realmodel
@pytest.mark.slow
def test_real_speech_segment_and_word_times_agree_with_faster_whisper(
    realspeech: Path, whisper_base: Path
) -> None:
    """Batched `segment` and `word` timestamps against faster-whisper's sequential
    `transcribe(word_timestamps=True)` on the same audio (beam 5, VAD on): segments sentence-sized,
    every time inside its member, and word start times within 0.15 s (median over the words the
    two transcripts share, paired by jiwer's alignment)."""
    import jiwer
    from faster_whisper import WhisperModel

    members = _timed_members(realspeech)
    names, audio = list(members), list(members.values())
    durations = {n: len(a) / RATE for n, a in members.items()}
    assert 180 <= durations["minutes_with_silences.wav"] <= 300
    base = {"model": str(whisper_base), "device": "cpu", "decode_batch_size": 4}
    transcriber = Transcriber(LoadOptions.of(PipelineConfig(**base).decode))
    segment_results, _ = _decode(transcriber, PipelineConfig(**base, timestamps="segment"), names, audio)
    word_results, stats = _decode(transcriber, PipelineConfig(**base, timestamps="word"), names, audio)
    assert stats.align_s > 0

    lengths = [s.end - s.start for r in segment_results for s in r.segments]
    assert float(np.median(lengths)) <= 12.0, lengths
    for result in segment_results + word_results:
        assert result.text, result.member
        _check_times(result, durations[result.member])
    long = next(r for r in word_results if r.member == "minutes_with_silences.wav")
    assert long.segments[0].start >= 24.0, "the first speech starts after 25 s of silence"

    model = WhisperModel(str(whisper_base), device="cpu", compute_type="int8")
    differences: list[float] = []
    for name, clip, ours in zip(names, audio, word_results, strict=True):
        segments, _ = model.transcribe(
            clip, beam_size=5, vad_filter=True, word_timestamps=True, condition_on_previous_text=False
        )
        theirs = [w for s in segments for w in s.words or ()]
        mine = [w for s in ours.segments for w in s.words or ()]
        ref = [_normalise(w.word) or "_" for w in theirs]
        hyp = [_normalise(w.word) or "_" for w in mine]
        aligned = jiwer.process_words(" ".join(ref), " ".join(hyp))
        for chunk in aligned.alignments[0]:
            if chunk.type == "equal":
                for i, j in zip(
                    range(chunk.ref_start_idx, chunk.ref_end_idx),
                    range(chunk.hyp_start_idx, chunk.hyp_end_idx),
                    strict=True,
                ):
                    differences.append(abs(theirs[i].start - mine[j].start))
        assert len(mine) >= 0.8 * len(theirs), name
    median = float(np.median(differences))
    print(f"word starts vs faster-whisper: median |diff| {median:.3f} s over {len(differences)} shared words")
    assert len(differences) >= 150
    assert median <= 0.15


# -- a broadcast programme: times and languages -------------------------------------------------------
def _piece(path: Path, seconds: float | None = None, level_db: float = -20.0) -> np.ndarray:
    samples = to_16k(path.read_bytes())
    if seconds is not None:
        samples = samples[: round(seconds * RATE)]
    rms = float(np.sqrt(np.mean(samples**2))) or 1.0
    return (samples * (10 ** (level_db / 20) / rms)).astype(np.float32)


def _programme(
    realspeech: Path, broadcast_set: Path
) -> tuple[np.ndarray, list[tuple[float, float, str, str]]]:
    """A programme in broadcast order: a jingle, English, 20 s of dead air (mains hum), Italian,
    a running tap, English over a waltz, pink-noise dead air, Portuguese. Returns the audio and
    its speech spans (start, end, language, reference)."""
    rng = np.random.default_rng(0)
    speech = {
        "en1": (realspeech / "audio" / "wn_librispeech-1995-1837-0001.wav", "en"),
        "it": (broadcast_set / "speech" / "pv_it.flac", "it"),
        "en2": (realspeech / "audio" / "sb_LJ050-0131.wav", "en"),
        "pt": (broadcast_set / "speech" / "pv_pt.flac", "pt"),
    }
    references = {r["file"]: r["reference"] for r in _manifest(realspeech)}
    references |= {"pv_it.flac": "Sempre alla radio nacquero anche alcune sue canzoni o meglio ritmi."}
    references |= {"pv_pt.flac": "Uma raposa velha não consegue aprender nenhum ofício."}
    hum = (10 ** (-58 / 20) * np.sqrt(2) * np.sin(2 * np.pi * 50 * np.arange(20 * RATE) / RATE)).astype(
        np.float32
    )
    pink = np.cumsum(rng.standard_normal(12 * RATE)).astype(np.float32)
    pink = (
        (pink - np.convolve(pink, np.ones(400) / 400, mode="same")) * 10 ** (-60 / 20) / (pink.std() or 1.0)
    )
    parts: list[np.ndarray] = []
    spans: list[tuple[float, float, str, str]] = []

    def add(samples: np.ndarray, key: str | None = None) -> None:
        start = sum(len(p) for p in parts) / RATE
        parts.append(samples.astype(np.float32))
        parts.append(np.zeros(round(0.3 * RATE), np.float32))
        if key is not None:
            path, language = speech[key]
            spans.append((start, start + len(samples) / RATE, language, references[path.name]))

    add(_piece(broadcast_set / "music" / "m_vibeace_a.ogg", 6.0))
    add(_piece(speech["en1"][0]), "en1")
    add(hum)
    add(_piece(speech["it"][0]), "it")
    add(_piece(broadcast_set / "noise" / "n_tap_a.flac", 8.0, level_db=-28.0))
    words = _piece(speech["en2"][0])
    bed = _piece(broadcast_set / "music" / "m_sweetwaltz_a.ogg", len(words) / RATE, level_db=-32.0)
    add(words + bed[: len(words)], "en2")  # speech over a music bed, 12 dB above it
    add(pink.astype(np.float32))
    add(_piece(speech["pt"][0]), "pt")
    return np.concatenate(parts), spans


@pytest.mark.realmodel
@pytest.mark.slow
@pytest.mark.parametrize("timestamps", ["segment", "word"])
def test_a_programmes_sentences_are_at_their_own_time_in_their_own_language(
    realspeech: Path, broadcast_set: Path, whisper_base: Path, timestamps: str
) -> None:
    """The broadcast guarantees with the defaults, in both timestamp modes: no segment lies over
    the music, noise or dead air between sentences; each sentence's first segment starts within
    1 s of it and its last ends within 1 s of it; each is decoded in its own language (not
    translated into the programme's), and the member's language is the one most spoken."""
    audio, spans = _programme(realspeech, broadcast_set)
    config = PipelineConfig(speakers=False, model=str(whisper_base), device="cpu", timestamps=timestamps)
    decoder = open_decoder(Transcriber(LoadOptions.of(config.decode)), DecodeOptions.of(config.decode))
    try:
        (result,) = decode_all(decoder, [audio], ["programme"])
    finally:
        decoder.close()
    segments = result.segments
    described = [(s.start, s.end, s.language, s.text) for s in segments]
    assert result.language == "en", described
    for seg in segments:
        near = [sp for sp in spans if sp[0] - 1.0 <= seg.start and seg.end <= sp[1] + 1.0]
        assert near, f"over non-speech: {seg.start:.2f}-{seg.end:.2f} {seg.text!r}; spans {spans}"
        assert seg.language == near[0][2], (seg.text, seg.language, near[0][2])
        assert (seg.words is not None) == (timestamps == "word")
        for word in seg.words or ():
            assert seg.start <= word.start <= word.end <= seg.end
    for start, end, language, reference in spans:
        inside = [s for s in segments if start - 1.0 <= s.start and s.end <= end + 1.0]
        assert inside, f"lost: {reference!r}; got {described}"
        assert abs(inside[0].start - start) <= 1.0 and abs(inside[-1].end - end) <= 1.0, (
            start,
            end,
            described,
        )
        said = " ".join(s.text for s in inside)
        # decoded in its own language, not lost: broadcast-dev's scorer's rule (a sentence is lost,
        # translated or mis-placed past WER 0.5). A tighter bound measured whisper-base's spelling
        # of one Italian sentence, which moves between CTranslate2 releases (3 or 4 of 11 words).
        assert _wer([_normalise(reference)], [_normalise(said)]) <= 50.0, (language, reference, said)


@pytest.mark.realmodel
@pytest.mark.slow
def test_speech_after_a_sentence_in_another_language_is_not_lost(
    speakers_set: Path, whisper_base: Path
) -> None:
    """A Portuguese sentence opens a window whose next 23 s are English: decoding in Portuguese,
    the model ends the window after its sentence ("no more speech"); the rest is decoded again,
    its language detected on it, so the English is transcribed in English."""
    audio = decode_audio(str(speakers_set / "dev09_brief_guests.flac"), sampling_rate=RATE)
    config = PipelineConfig(speakers=False, model=str(whisper_base), device="cpu")
    decoder = open_decoder(Transcriber(LoadOptions.of(config.decode)), DecodeOptions.of(config.decode))
    try:
        (result,) = decode_all(decoder, [audio], ["dev09"])
    finally:
        decoder.close()
    described = [(round(s.start, 1), round(s.end, 1), s.language, s.text) for s in result.segments]
    assert any(s.language == "pt" and 26 < s.start < 28 for s in result.segments), described
    after = [s for s in result.segments if s.start >= 30.0]
    assert sum(s.end - s.start for s in after) > 15.0, described
    assert {s.language for s in after} == {"en"}, described

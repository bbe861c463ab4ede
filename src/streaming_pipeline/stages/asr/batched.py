"""The batched decoder: one queue of windows across members, decoded in shared calls.

`BatchedDecoder` treats every member submitted to it as rows of one queue:

    prep threads   Silero VAD (vad.py) -> rows of contiguous speech of at most 30 s -> log-Mel features
    decode thread  packs rows of different members into one `generate` call (`decode_batch_size`
                   rows, the oldest row plus those nearest to it in length from a look-ahead
                   window), chooses each row's language (policy.row_language), applies
                   faster-whisper's quality guards per row and decodes the rows that failed
                   again at the next temperature, batched with other failures

A member's result is complete, and its future resolved, when all its rows are final. Rows of
different members never share a window. faster-whisper 1.2.1's `BatchedInferencePipeline`
batches only one file's chunks and ignores the fallback temperatures and the no-speech rule;
this decoder follows its windowing (VAD chunks, features padded to 30 s) and the sequential
path's guards (`WhisperModel.generate_with_fallback`).

Time (`--timestamps`): `none` decodes with `<|notimestamps|>` (a window is one segment);
`segment` decodes with timestamp tokens and splits each row at them (timing.split_by_timestamps),
then aligns the chosen tokens to the audio by cross-attention, one `align` call per group of
rows that share a start sequence, on the encoder output of the decoding call: a segment starts
at its first word and ends at its last, and is split where its words pause
(timing.speech_segments). `word` keeps those words. Every time then returns from the
speech-only timeline to the member's own; a row never spans a gap VAD removed
(policy.speech_rows). The model's calls are calls.py; the policy is policy.py and timing.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from ...errors import TranscriptionError
from ...transcript import Transcript
from .calls import WhisperCalls
from .options import DecodeOptions
from .policy import (
    JOIN_GAP_S,
    LOOKAHEAD_CALLS,
    SAMPLE_RATE,
    WINDOW_S,
    RowQueue,
    main_language,
    speech_rows,
)
from .protocol import DecoderStats, TranscriberModel, cancelled_future
from .provenance import of_transcriber
from .rows import Member, Outcome, Row, RowCall
from .timing import (
    SpeechTimeline,
    speech_segments,
)
from .vad import detect_speech

log = logging.getLogger(__name__)

# A call that is not full waits this long at most for rows of members being prepared.
FILL_WAIT_S = 0.5
# Rows (features, ~1 MB each) queued at most, per row of a call.
QUEUED_ROWS_PER_BATCH_ROW = 2 * LOOKAHEAD_CALLS
# A row whose decode stopped this long before its end is decoded again from where it stopped,
# as the sequential path seeks (a shorter tail is left: a whole padded window for it costs more
# than the words it could hold).
MEL_FRAMES_PER_SECOND = 100
# Rows per generate call when --decode-batch-size is 0: 16 on CUDA (the H100 numbers:
# 235x realtime at 16, 259 at 32, 277 at 64 for a large-v2-sized model); on CPU, measured by
# `bench` on 2 cores with whisper-base (docs/performance.md).
DEFAULT_BATCH = {"cuda": 16, "cpu": 8}
PREP_THREADS_CUDA = 4


class BatchedDecoder:
    """Rows (speech chunks of at most 30 s) of many members, decoded in shared `generate` calls."""

    def __init__(self, transcriber: TranscriberModel, options: DecodeOptions) -> None:
        from faster_whisper.vad import VadOptions

        self._transcriber = transcriber
        self._options = options
        self.device = transcriber.device
        device = self.device.device
        self.provenance = of_transcriber(transcriber, options)
        self._calls = WhisperCalls(transcriber.model, options)
        self._rows = RowCall(self._calls, options)
        self._vad = VadOptions(max_speech_duration_s=WINDOW_S, min_silence_duration_ms=160)
        self.batch_size = options.decode_batch_size or DEFAULT_BATCH.get(device, 8)
        self._limit = self.batch_size  # lowered by CUDA out-of-memory errors
        self.fill_wait_s = FILL_WAIT_S
        self._cond = threading.Condition()
        self._queue = RowQueue()
        self._preparing = 0  # members handed to the prep threads and not yet all queued
        self._max_queued = max(QUEUED_ROWS_PER_BATCH_ROW * self.batch_size, 64)
        self._members: set[Member] = set()
        self._in_call: Counter[Member] = Counter()  # rows of each member in the running call
        self._stopping = False
        self._closed = False
        self._slots = threading.BoundedSemaphore(options.members_in_flight)
        self._stats = DecoderStats()  # written under `_cond`
        # VAD and features for a GPU decoding ~250x realtime need more than one core (one prep
        # thread does ~280x on this project's 2-core machine): at least 4 on CUDA.
        self.prep_threads = max(options.workers, PREP_THREADS_CUDA if device == "cuda" else 1)
        self._prep = ThreadPoolExecutor(self.prep_threads, thread_name_prefix="decode-prep")
        self._thread = threading.Thread(target=self._loop, name="decoder", daemon=True)
        self._thread.start()
        log.info(
            "batched decoder: %d rows per call, up to %d members in flight, %d prep threads, "
            "temperatures %s, timestamps %s",
            self.batch_size,
            options.members_in_flight,
            self.prep_threads,
            ",".join(f"{t:g}" for t in options.temperatures),
            options.timestamps,
        )

    # -- public -----------------------------------------------------------------------------
    def submit(self, audio: np.ndarray, *, archive: str, member: str) -> Future[Transcript]:
        """Blocks while `process_batch_size` members are in flight; the future is cancelled when
        the decoder stops before the member is complete."""
        while not self._slots.acquire(timeout=1.0):
            if not self._thread.is_alive():  # never wait on a decoder that cannot free a slot
                raise TranscriptionError("the decoder thread has stopped")
        future: Future[Transcript] = Future()
        m = Member(archive, member, len(audio) / SAMPLE_RATE, future)
        if self._options.language is not None or not self._calls.multilingual:
            m.language, m.language_probability = self._options.language or "en", 1.0
        with self._cond:
            if self._stopping:
                self._slots.release()
                return cancelled_future()
            self._members.add(m)
            self._preparing += 1
        future.add_done_callback(lambda _f: self._slots.release())
        self._prep.submit(self._prepare, m, audio)
        return future

    def cancel_pending(self) -> int:
        """Stop: rows in the call being decoded finish, and members whose rows all were in it
        complete; every other member's future is cancelled (it stays pending for the next run)."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            doomed = [m for m in self._members if self._in_call[m] != m.rows_left or not m.rows]
            self._members.difference_update(doomed)
            self._cond.notify_all()
        return sum(m.future.cancel() for m in doomed)

    def stats(self) -> DecoderStats:
        with self._cond:  # align_s: a float only the decode thread writes (rows.RowCall)
            return replace(self._stats, align_s=self._rows.align_s)

    def close(self) -> None:
        self.cancel_pending()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._prep.shutdown(wait=True, cancel_futures=True)
        with self._cond:
            leftovers = list(self._members)
            self._members.clear()
        for m in leftovers:
            m.future.cancel()

    # -- preparation (prep threads) -----------------------------------------------------------
    def _prepare(self, m: Member, audio: np.ndarray) -> None:
        started, cpu = time.monotonic(), time.thread_time()
        vad_cpu = features_cpu = 0.0
        try:
            if self._options.vad:
                m.speech = detect_speech(audio, self._vad)
                vad_cpu = time.thread_time() - cpu
            else:
                step = WINDOW_S * SAMPLE_RATE
                m.speech = [
                    {"start": s, "end": min(s + step, len(audio))} for s in range(0, len(audio), step)
                ]
            m.speech = speech_rows(m.speech, WINDOW_S * SAMPLE_RATE, round(JOIN_GAP_S * SAMPLE_RATE))
            m.rows = m.rows_left = len(m.speech)
            if not m.speech:
                self._complete(m)
                return
            offset = 0
            for index, region in enumerate(m.speech):
                samples = audio[region["start"] : region["end"]]
                cpu = time.thread_time()
                features = self._calls.features(samples)
                features_cpu += time.thread_time() - cpu
                row = Row(m, index, features, offset / SAMPLE_RATE, len(samples) / SAMPLE_RATE)
                offset += len(samples)
                if not self._enqueue(row):
                    return
        except Exception as exc:  # noqa: BLE001 - any failure is this member's alone
            self._fail([m], f"transcription failed: {exc}")
        finally:
            with self._cond:
                self._preparing -= 1
                self._stats.prep_s += time.monotonic() - started
                self._stats.vad_cpu_s += vad_cpu
                self._stats.features_cpu_s += features_cpu
                self._cond.notify_all()

    def _enqueue(self, row: Row) -> bool:
        """False when the member was cancelled (stop) and its remaining rows are not needed."""
        with self._cond:
            while self._rows_held() >= self._max_queued and not self._stopping:
                self._cond.wait()
            if self._stopping or row.member.future.done():
                return False
            self._queue.add(row)
            self._stats.rows += 1
            self._cond.notify_all()
        return True

    # -- decoding (decode thread) --------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not len(self._queue):
                    self._cond.wait()
                deadline = time.monotonic() + self.fill_wait_s
                while not self._closed and self._filling() and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)  # a fuller call costs the GPU little more than this one
                if self._closed:
                    return
                rows, level = self._queue.pack(self._limit)
                self._in_call = Counter(r.member for r in rows)
            try:
                self._decode(rows, level)
            except Exception as exc:
                log.exception("decoding %d rows failed", len(rows))
                self._fail(list({r.member for r in rows}), f"transcription failed: {exc}")
            finally:
                with self._cond:
                    self._in_call = Counter()
                    self._cond.notify_all()

    def _rows_held(self) -> int:
        """Rows queued or in the running call: what the prep threads' backpressure counts."""
        return len(self._queue) + self._in_call.total()

    def _filling(self) -> bool:
        """Only fresh rows wait, fewer than a call holds, and more are being prepared."""
        fresh = len(self._queue.fresh)
        return not self._queue.has_fallback() and 0 < fresh < self._limit and self._preparing > 0

    def _decode(self, rows: list[Row], level: int) -> None:
        started = time.monotonic()
        try:
            outcomes = self._rows.infer(rows, level)
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower() or len(rows) == 1:
                raise
            half = (len(rows) + 1) // 2
            with self._cond:
                first = self._stats.oom_halvings == 0
                self._stats.oom_halvings += 1
                self._limit = min(self._limit, half)
            (log.warning if first else log.debug)(
                "out of GPU memory with %d rows per call: %d from now on (%s)", len(rows), half, exc
            )
            self._decode(rows[:half], level)
            self._decode(rows[half:], level)
            return
        with self._cond:
            self._stats.calls += 1
            self._stats.rows_decoded += len(rows)
            self._stats.fallback_rows += len(rows) if level else 0
            self._stats.decoder_busy_s += time.monotonic() - started
        for row, outcome in zip(rows, outcomes, strict=True):
            self._settle(row, outcome, level)

    def _settle(self, row: Row, outcome: Outcome, level: int) -> None:
        """A row's attempt recorded; the row requeued at the next temperature, or final."""
        row.attempts.append(outcome.attempt)
        if outcome.final is None:
            with self._cond:
                if self._stopping:  # no more calls: the member stays pending for the next run
                    self._members.discard(row.member)
                    row.member.future.cancel()
                    return
                if row.member.future.done():
                    return
                row.level = level + 1
                self._queue.retry(row, level + 1)
                self._cond.notify_all()
            return
        row.member.segments[(row.index, row.part)] = outcome.segments
        if outcome.segments and row.part == 0:
            row.member.spoken.append((row.language, row.duration, row.language_probability))
        if outcome.continue_at is not None:
            self._continue(row, outcome.continue_at, redetect=outcome.redetect)
            return
        row.member.rows_left -= 1
        if row.member.rows_left == 0:
            self._complete(row.member)

    def _continue(self, row: Row, at: float, *, redetect: bool = False) -> None:
        """The rest of a row after `at` (its window's seconds) as a row of its own, queued at
        once (the decode thread must not wait on the prep threads' backpressure); in its row's
        language, or one detected on it (`redetect`: the row's decode ended where it did)."""
        frame = round(at * MEL_FRAMES_PER_SECOND)
        rest = Row(
            row.member,
            row.index,
            row.features[..., frame:],
            row.offset + at,
            row.duration - at,
            part=row.part + 1,
            language=None if redetect else row.language,
            language_probability=0.0 if redetect else row.language_probability,
            resumed_from=row.language if redetect else None,
        )
        with self._cond:
            if self._stopping:  # no more calls: the member stays pending for the next run
                self._members.discard(row.member)
                row.member.future.cancel()
                return
            self._queue.add(rest)
            self._stats.rows += 1
            self._stats.continued_rows += 1
            self._cond.notify_all()

    def _complete(self, m: Member) -> None:
        timeline = SpeechTimeline(m.speech)
        segments = [seg for index in sorted(m.segments) for seg in m.segments[index]]
        for seg in segments:
            timeline.restore(seg)  # back to the member's own timeline, silences included
        segments = speech_segments(segments, m.duration, keep_words=self._options.keep_words)
        language, probability = main_language(m.spoken)
        if language is None:  # no speech: what its first row was detected as
            language, probability = m.language, m.language_probability
        result = Transcript.of(
            segments,
            archive=m.archive,
            member=m.name,
            model=self._transcriber.model_name,
            language=language,
            language_probability=probability,
            duration=m.duration,
            provenance=self.provenance,
        )
        with self._cond:
            self._members.discard(m)
            self._stats.members += 1
        if not m.future.done():
            m.future.set_result(result)

    def _fail(self, members: list[Member], reason: str) -> None:
        with self._cond:
            for m in members:
                self._members.discard(m)
            self._queue.drop({id(m) for m in members})
            self._cond.notify_all()
        for m in members:
            if not m.future.done():
                m.future.set_exception(TranscriptionError(reason))

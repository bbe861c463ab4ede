"""The per-member decoder: faster-whisper's own sequential `transcribe`, one member a thread.

The reference path the batched decoder is measured against, and the one `--decoder per-member`
selects. Its language is detected once per member (provenance.PER_MEMBER_RULE).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from ...transcript import Transcript
from .options import DecodeOptions
from .protocol import DecoderStats, TranscriberLike, cancelled_future
from .provenance import of_transcriber


class PerMemberDecoder:
    """faster-whisper's own `transcribe`, `workers` members at once, each in a thread of its
    pool (`submit` is called from the run's main thread, the futures resolve in the pool's)."""

    def __init__(self, transcriber: TranscriberLike, options: DecodeOptions) -> None:
        self._transcriber = transcriber
        self._options = options = replace(options, decoder="per-member")
        self.device = transcriber.device
        self.provenance = of_transcriber(transcriber, options)
        workers = options.workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="transcribe")
        # Members waiting for a thread hold their audio: keep that to one more per thread.
        self._slots = threading.BoundedSemaphore(2 * workers)
        self._pending: set[Future[Transcript]] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._busy = 0.0
        self._members = 0

    def submit(self, audio: np.ndarray, *, archive: str, member: str) -> Future[Transcript]:
        self._slots.acquire()
        with self._lock:
            if self._stopping:
                self._slots.release()
                return cancelled_future()
            future = self._pool.submit(self._run, audio, archive, member)
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _run(self, audio: np.ndarray, archive: str, member: str) -> Transcript:
        started = time.monotonic()
        try:
            result = self._transcriber.transcribe(audio, self._options, archive=archive, member=member)
            return replace(result, provenance=self.provenance)
        finally:
            with self._lock:
                self._busy += time.monotonic() - started
                self._members += 1

    def _done(self, future: Future[Transcript]) -> None:
        with self._lock:
            self._pending.discard(future)
        self._slots.release()

    def cancel_pending(self) -> int:
        """Members not started stay pending; those being transcribed finish."""
        with self._lock:
            self._stopping = True
            pending = list(self._pending)
        return sum(f.cancel() for f in pending)

    def stats(self) -> DecoderStats:
        with self._lock:
            return DecoderStats(decoder_busy_s=self._busy, members=self._members)

    def close(self) -> None:
        self.cancel_pending()
        self._pool.shutdown(wait=True, cancel_futures=True)

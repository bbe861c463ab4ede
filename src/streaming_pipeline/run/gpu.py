"""GPU utilisation and memory from NVML (`nvidia-ml-py`), sampled by a thread while work runs.

Used by the worker (samples go to PostgreSQL for the day report) and by `bench` (mean busy share
and peak memory per variant). Without CUDA, NVML or a GPU it samples nothing: figures are left
out, never guessed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class GpuSampler:
    def __init__(self, device: str, interval: float = 1.0) -> None:
        self.interval = interval
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._samples: list[tuple[float, int, float, float]] = []  # (unix time, gpu, busy, memory MB)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # noqa: BLE001 - no NVML: the figures are left out, not guessed
            log.warning("GPU utilisation not sampled: %s", exc)
            return
        self._nvml = pynvml

    @property
    def active(self) -> bool:
        return self._nvml is not None

    def start(self) -> None:
        if not self.active or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="gpu-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def take(self) -> list[tuple[float, int, float, float]]:
        """The samples since the last call."""
        with self._lock:
            taken, self._samples = self._samples, []
        return taken

    @contextlib.contextmanager
    def sampling(self) -> Iterator[dict[str, float]]:
        """Mean busy share (of the busiest GPU per sample) and peak memory while the block runs."""
        figures: dict[str, float] = {}
        self.take()
        self.start()
        try:
            yield figures
        finally:
            self.stop()
            samples = self.take()
            if samples:
                by_time: dict[float, list[tuple[float, int, float, float]]] = {}
                for sample in samples:
                    by_time.setdefault(sample[0], []).append(sample)
                busiest = [max(s[2] for s in group) for group in by_time.values()]
                memory = [sum(s[3] for s in group) for group in by_time.values()]
                figures.update(busy=sum(busiest) / len(busiest), memory_mb=max(memory))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.time()
            try:
                rows = [
                    (
                        now,
                        i,
                        self._nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0,
                        self._nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20,
                    )
                    for i, h in enumerate(self._handles)
                ]
            except Exception as exc:  # noqa: BLE001 - a GPU that stops answering ends the sampling
                log.warning("GPU sampling stopped: %s", exc)
                return
            with self._lock:
                self._samples.extend(rows)

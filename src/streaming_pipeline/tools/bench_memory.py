"""`bench`'s measurements of a process tree: its peak PSS (the main process apart), its
scratch, its CPU pinning; summed RSS is kept for reference only (it counts a forked parent twice)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run.gpu import GpuSampler
from ..state.store import ProgressStore

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.02
GPU_SAMPLE_INTERVAL_S = 0.1  # NVML's utilisation is averaged over its own sample period


@dataclass
class ProcessPeak:
    wall_s: float
    returncode: int
    # The process tree's summed PSS (main process + conversion pool + rsync): a page shared by
    # processes counts once, split among them. Summed RSS counts the main process twice while
    # it has a forked child (rsync), so its peak grew with a run's length; it is kept for reference.
    peak_pss_mb: float
    peak_main_pss_mb: float
    peak_rss_mb: float
    peak_main_rss_mb: float  # the main process's high-water mark (VmHWM)
    peak_scratch_bytes: int


def _sampled(
    worker: Callable[[ProgressStore], Any], dsn: str, gpu: GpuSampler
) -> tuple[Any, dict[str, float]]:
    """Run the worker `worker(store)` makes on its own store, with the GPU sampled meanwhile."""
    store = ProgressStore(dsn)
    try:
        with gpu.sampling() as figures:
            return worker(store).run(), figures
    finally:
        store.close()


@contextlib.contextmanager
def pinned(cores: set[int], server: int | None = None) -> Iterator[None]:
    """Every thread of this process on `cores` (threads and processes started inside inherit it),
    and of `server` (the embedded PostgreSQL's postmaster) and its children: on one core the
    database would otherwise run on another for free, which it cannot on all of them."""
    tids = _threads(os.getpid()) + [t for pid in with_children(server) for t in _threads(pid)]
    before: dict[int, set[int]] = {}
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cores)
    try:
        yield
    finally:
        for tid, mask in before.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(tid, mask)


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # it ended meanwhile
        return []


def with_children(pid: int | None) -> list[int]:
    """`pid` and its children (PostgreSQL's server processes: backends fork from the postmaster,
    so those a run connects later inherit its affinity)."""
    if pid is None:
        return []
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            children.append(int(entry))
    return [pid, *children]


# -- process measurements ------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid is the 2nd field after ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """A process's proportional set size (`smaps_rollup`, Linux 4.14+); its RSS where the kernel
    has no rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return _status_kb(pid, "VmRSS")


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def measure_process(argv: Sequence[str], env: dict[str, str], scratch: Path, log_path: Path) -> ProcessPeak:
    """Run `argv`, sampling its process tree's PSS and RSS and the bytes under `scratch` until it
    exits."""
    peak_pss = peak_main_pss = peak_rss = peak_main = peak_scratch = 0
    started = time.monotonic()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            pids = [proc.pid, *_children(proc.pid)]
            main_pss = _pss_kb(proc.pid)
            peak_main_pss = max(peak_main_pss, main_pss)
            peak_pss = max(peak_pss, main_pss + sum(_pss_kb(p) for p in pids[1:]))
            peak_rss = max(peak_rss, sum(_status_kb(p, "VmRSS") for p in pids))
            peak_main = max(peak_main, _status_kb(proc.pid, "VmHWM"))
            peak_scratch = max(peak_scratch, _tree_size(scratch))
            time.sleep(SAMPLE_INTERVAL_S)
    return ProcessPeak(
        wall_s=time.monotonic() - started,
        returncode=proc.returncode,
        peak_pss_mb=peak_pss / 1024,
        peak_main_pss_mb=peak_main_pss / 1024,
        peak_rss_mb=peak_rss / 1024,
        peak_main_rss_mb=peak_main / 1024,
        peak_scratch_bytes=peak_scratch,
    )

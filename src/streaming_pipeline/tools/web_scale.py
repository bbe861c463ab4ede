"""The web view over search-scale's generated month (`search-scale --http`): search over HTTP,
a member page's first byte, and what seeking to the middle of an hour-long FLAC fetches.

What is real: `streaming-pipeline serve` in a process of its own over the filled database, read
over HTTP as a browser reads it; the seek is made by headless Chromium (Selenium with Debian's
chromium-driver), its bytes counted from Chromium's own network events. What is SYNTHETIC: the
month's text (search_scale.py), and the hour-long member's audio (espeak-ng sentences with quiet
noise between them, 16 kHz FLAC as the workers write it), with a segment every 5 s."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..state.embedded_pg import free_port
from ..state.simulation import MeasuredMembers
from ..state.states import MemberStatus
from ..state.store import ArchiveKey, MemberRecord, Owner, ProgressStore
from ..transcript import Segment
from .samples import SPOKEN, speak

HOUR_S = 3600
RATE = 16000


@dataclass
class WebScaleResult:
    search_ms: dict[str, list[float]] = field(default_factory=dict)
    first_byte_ms: list[float] = field(default_factory=list)  # members of search-scale's month
    hour_page_first_byte_ms: list[float] = field(default_factory=list)  # the hour-long member's
    page_first_byte_ms: dict[str, list[float]] = field(default_factory=dict)  # each other page type's
    hour_flac_bytes: int = 0
    seek_bytes: int | None = None  # the FLAC's bytes received until it played from the middle
    seek_ms: float | None = None  # from the page's request until it played there
    seek_requests: int = 0  # the Range requests it took
    seek_note: str = ""

    def lines(self) -> list[str]:
        every = [t for times in self.search_ms.values() for t in times]
        out = [f"{'over HTTP (serve)':<24} {'n':>4} {'median ms':>10} {'p95 ms':>8}"]
        for kind, times in self.search_ms.items():
            out.append(f"{kind:<24} {len(times):>4} {statistics.median(times):>10.1f} {_p95(times):>8.1f}")
        out.append(
            f"{'search, all kinds':<24} {len(every):>4} {statistics.median(every):>10.1f} {_p95(every):>8.1f}"
        )
        pages = [(f"{kind}, 1st byte", times) for kind, times in self.page_first_byte_ms.items()]
        for label, times in (("member page, 1st byte", self.first_byte_ms),
                             ("hour member, 1st byte", self.hour_page_first_byte_ms), *pages):  # fmt: skip
            out.append(f"{label:<24} {len(times):>4} {statistics.median(times):>10.1f} {_p95(times):>8.1f}")
        if self.seek_bytes is not None and self.seek_ms is not None:
            out.append(
                f"seek to 30:00 of a {self.hour_flac_bytes / 2**20:.1f} MiB hour-long FLAC: "
                f"{self.seek_bytes / 2**10:.0f} KiB in {self.seek_requests} requests before it played, "
                f"{self.seek_ms:.0f} ms"
            )
        else:
            out.append(f"seek: not measured ({self.seek_note})")
        return out


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def write_hour_flac(path: Path, seconds: int = HOUR_S) -> None:
    """Sentences with quiet noise between them, written in blocks (flat memory)."""
    import soundfile as sf
    import soxr

    voices = [soxr.resample(*_spoken(i), RATE) for i in range(len(SPOKEN))]
    rng = np.random.default_rng(5)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16", format="FLAC") as sink:
        written, i = 0, 0
        while written < seconds * RATE:
            gap = (rng.standard_normal(RATE) * 0.003).astype(np.float32)
            block = np.concatenate([voices[i % len(voices)] * 0.5, gap])[: seconds * RATE - written]
            sink.write(block)
            written += len(block)
            i += 1


def _spoken(i: int) -> tuple[np.ndarray, int]:
    voice, text = SPOKEN[i]
    return speak(text, voice=voice)


def add_members(store: ProgressStore, remote: Path, hour_flac: Path, sample: int) -> tuple[int, list[int]]:
    """The hour-long member (a segment each 5 s), and files for `sample` of the month's members
    (a copy of a short FLAC at their recorded path): their pages are the ones timed."""
    key = ArchiveKey("2001-06-01/hour.tar.xz", dt.date(2001, 6, 1), "hour")
    store.archives.start(key, path="/in/hour.tar.xz", bytes_total=0, owner=Owner(None, "h", 0))
    relpath = "2001-06-01/hour/programme.flac"
    target = remote / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(hour_flac), target)
    segments = [
        Segment(float(s), s + 4.5, f"segment at {s} seconds of the programme") for s in range(0, HOUR_S, 5)
    ]
    record = MemberRecord(
        "programme.wav", MemberStatus.UPLOADING, language="en", remote_path=f"{remote}/{relpath}",
        duration_s=float(HOUR_S), searchable_segments=len(segments), segments=segments,
    )  # fmt: skip
    store.members.record(key, [record])
    store.members.mark_done(key.archive, [(record.member, record.remote_path or "")])
    measured = MeasuredMembers(store)
    (hour_id,) = measured.ids(key.archive)
    rows = measured.sample(key.archive, sample)
    short = remote / "short.flac"
    _cut(target, short, seconds=20)
    for _, remote_path in rows:
        path = Path(remote_path)  # where a worker would have put it
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(short, path)
    return hour_id, [member_id for member_id, _ in rows]


def _cut(source: Path, target: Path, seconds: int) -> None:
    import soundfile as sf

    data, rate = sf.read(source, frames=seconds * RATE, dtype="float32")
    sf.write(target, data, rate, subtype="PCM_16", format="FLAC")


def start_serve(
    dsn: str,
    remote: str,
    log: Path,
    *options: str,
    host: str = "127.0.0.1",
    connect: str = "127.0.0.1",
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """`streaming-pipeline serve` as users run it, in a process of its own with this process's
    environment less its PIPELINE_* settings (plus `env`), once it answers: the process and the
    address to reach it at (`connect`:port)."""
    port = free_port()
    cmd = [sys.executable, "-m", "streaming_pipeline", "serve", "--dsn", dsn, "--remote", remote,
           "--host", host, "--port", str(port), *options]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**environment, **(env or {})})
    address = f"{connect}:{port}"
    deadline = time.monotonic() + 60
    while True:
        probe = http.client.HTTPConnection(address, timeout=5)
        try:
            probe.connect()  # uvicorn listens once the application has started
            return proc, address
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                said = log.read_text()[-3000:]
                raise RuntimeError(f"serve did not start (exit {proc.poll()}): {said}") from None
            time.sleep(0.1)
        finally:
            probe.close()


@contextmanager
def serving(dsn: str, remote: Path, log: Path) -> Iterator[str]:
    """`serve` until the block ends; yields its address."""
    proc, address = start_serve(dsn, str(remote), log)
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(host: str, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[float, float, int]:
    """(ms to the first byte, ms to the last, status) of one GET."""
    own = conn is None
    connection = conn or http.client.HTTPConnection(host, timeout=60)
    started = time.perf_counter()
    connection.request("GET", path)
    answer = connection.getresponse()  # returns once the status line and headers are in
    first = time.perf_counter()
    answer.read()
    last = time.perf_counter()
    if own:
        connection.close()
    return (first - started) * 1000, (last - started) * 1000, answer.status


def measure(
    host: str,
    kinds: dict[str, list[str]],
    members: list[int],
    hour_id: int,
    rounds: int = 3,
    pages: dict[str, str] | None = None,
) -> WebScaleResult:
    """Search over HTTP, member pages' first bytes, and `pages` (a page type's label: a path)
    each read 10 times per round for their first byte."""
    result = WebScaleResult()
    conn = http.client.HTTPConnection(host, timeout=60)  # kept alive, as a browser keeps it
    for kind, texts in kinds.items():
        result.search_ms[kind] = []
        for q in texts:
            _, total, status = _get(host, "/search?" + urllib.parse.urlencode({"q": q}), conn)
            if status != 200:
                raise RuntimeError(f"search {q!r} answered {status}")
            result.search_ms[kind].append(total)
    for _ in range(rounds):
        for member in members:
            first, _, status = _get(host, f"/member/{member}", conn)
            if status != 200:
                raise RuntimeError(f"member {member} answered {status}")
            result.first_byte_ms.append(first)
        result.hour_page_first_byte_ms.append(_get(host, f"/member/{hour_id}", conn)[0])
        for label, path in (pages or {}).items():
            for _ in range(10):
                first, _, status = _get(host, path, conn)
                if status != 200:
                    raise RuntimeError(f"{path} answered {status}")
                result.page_first_byte_ms.setdefault(label, []).append(first)
    conn.close()
    return result


class NoBrowser(Exception):
    """Headless Chromium cannot be driven here; the message says what to install."""


def headless_chromium(workdir: Path, *flags: str, performance_log: bool = False) -> Any:
    """Debian's chromium driven by Selenium through chromium-driver (never a downloaded driver),
    headless, muted, allowed to play without a gesture, its profile in `workdir`."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise NoBrowser("selenium is not installed (pip install -e '.[test]')") from None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_exe = shutil.which("chromedriver")
    if chromium is None or driver_exe is None:
        raise NoBrowser("chromium and chromium-driver are not installed (scripts/install-deps.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={workdir / 'chromium'}",
                 *flags):  # fmt: skip
        options.add_argument(flag)
    if performance_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_exe), options=options)


def measure_seek(host: str, hour_id: int, result: WebScaleResult, workdir: Path) -> None:
    """Headless Chromium opens the hour-long member at ?t=1800&play=1; its network events say
    how many bytes of the FLAC came before it played there."""
    try:
        driver = headless_chromium(workdir, performance_log=True)
    except NoBrowser as exc:
        result.seek_note = str(exc)
        return
    try:
        started = time.perf_counter()
        driver.get(f"http://{host}/member/{hour_id}?t=1800&play=1")
        deadline = time.monotonic() + 60
        script = (
            "const a = document.getElementById('player'); return [a.paused, a.currentTime, a.readyState];"
        )
        while True:
            paused, now, ready = driver.execute_script(script)
            if not paused and now > 1800.05 and ready >= 3:
                driver.execute_script("document.getElementById('player').pause()")
                result.seek_ms = (time.perf_counter() - started) * 1000
                break
            if time.monotonic() > deadline:
                result.seek_note = f"it did not play from 30:00 within 60 s (at {now:.1f} s, ready {ready})"
                return
            time.sleep(0.02)
        flac_requests: set[str] = set()
        received = 0
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent" and params["request"]["url"].endswith(
                "/flac"
            ):
                flac_requests.add(params["requestId"])
            elif message["method"] == "Network.dataReceived" and params["requestId"] in flac_requests:
                received += int(params.get("encodedDataLength") or params.get("dataLength") or 0)
        result.seek_bytes = received
        result.seek_requests = len(flac_requests)
    finally:
        driver.quit()

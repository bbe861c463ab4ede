"""The web view's fixtures: a processed day, `streaming-pipeline serve` run as users run it (a
process of its own on a free port), and headless Chromium driven by Selenium through Debian's
chromium-driver, with every other host unresolvable (the network off: no asset may come from
elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streaming_pipeline.state.embedded_pg import free_port
from streaming_pipeline.tools.web_scale import NoBrowser, headless_chromium

from ..conftest import DAY, query


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request, without following redirects: (status, headers, body)."""
        request = urllib.request.Request(self.url + path, headers=headers or {})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=30) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def serve(
    tmp_path: Path, dsn: str, remote: str, *options: str, host: str = "127.0.0.1",
    connect: str = "127.0.0.1", env: dict[str, str] | None = None,
) -> Served:  # fmt: skip
    """`streaming-pipeline serve` in a process of its own, once it answers."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    scratch = str(tmp_path / "serve-scratch")
    cmd = [sys.executable, "-m", "streaming_pipeline", "serve", "--dsn", dsn, "--remote", remote,
           "--host", host, "--port", str(port), "--scratch-dir", scratch, *options]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    proc = subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**environment, **(env or {})}
    )
    served = Served(f"http://{connect}:{port}", proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            served.get("/static/app.css")
            return served
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"serve did not answer: {log.read_text()[-3000:]}")


@pytest.fixture
def server_stops() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        s.proc.terminate()
        try:
            s.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            s.proc.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Every host but 127.0.0.1 unresolvable: an asset from elsewhere would fail to load."""
    try:
        driver = headless_chromium(
            tmp_path, "--window-size=1280,900", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
        )
    except NoBrowser as exc:
        pytest.fail(str(exc))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def member_id(dsn: str, member: str) -> int:
    (row,) = query(dsn, "SELECT id FROM audio_files WHERE member = %s", member)
    return int(row["id"])


__all__ = ["DAY", "Served", "member_id", "serve"]

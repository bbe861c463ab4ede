"""The web view's fixtures: a processed day, `streaming-pipeline serve` run as users run it (a
process of its own on a free port), and headless Chromium driven by Selenium through Debian's
chromium-driver, with every other host unresolvable (the network off: no asset may come from
elsewhere)."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streaming_pipeline.tools.web_scale import NoBrowser, headless_chromium, start_serve

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


def serve(tmp_path: Path, dsn: str, remote: str, *options: str, **where: Any) -> Served:
    """`streaming-pipeline serve` in a process of its own, once it answers (tools/web_scale.py's
    start_serve; `where`: its host, connect and env)."""
    log = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*.log')))}.log"
    scratch = ["--scratch-dir", str(tmp_path / "serve-scratch")]
    proc, address = start_serve(dsn, remote, log, *scratch, *options, **where)
    return Served(f"http://{address}", proc, log)


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

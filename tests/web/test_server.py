"""`serve` over HTTP, as a process of its own over a day processed with the random-weight model
(structure only: no assertion reads its words): Range requests, what a URL can reach, escaping,
the policy headers, tokens, files that went missing, an rsync destination's cache."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.tools.samples import write_tar_xz
from streaming_pipeline.web.views import MEDIA_CHUNK

from ..conftest import DAY, local_day_options, query, worker_options
from .conftest import member_id, serve

HOSTILE = ['studio/"><script>alert(1)</script>.wav', 'studio/it\'s "quoted" <img src=x onerror=alert(2)>.wav']


def process_day(tmp_path: Path, dsn: str, model: Path, clips, remote: str | None = None) -> Path:
    """One archive: two clips under hostile names, two under plain ones, and one rejected."""
    files = [(HOSTILE[0], clips[0][1]), (HOSTILE[1], clips[1][1]), clips[2], clips[3],
             ("../escape.wav", clips[4][1])]  # fmt: skip
    write_tar_xz(tmp_path / "input" / DAY / "09_00.tar.xz", files)
    options = worker_options(tmp_path, dsn, model)
    if remote is not None:
        options[options.index("--remote") + 1] = remote
    rc = main(["process-day", DAY, "--executor", "local", "--input-root", str(tmp_path / "input"),
               "--log-dir", str(tmp_path / "logs"), "--timestamps", "word", "--subtitles", "srt,vtt",
               *options])  # fmt: skip
    assert rc == 0
    return tmp_path / "remote"


def flac_of(remote: Path, dsn: str, member: str) -> Path:
    (row,) = query(dsn, "SELECT remote_path FROM audio_files WHERE member = %s", member)
    return Path(row["remote_path"])


@pytest.mark.slow
def test_pages_files_and_what_a_url_cannot_reach(tmp_path: Path, pg_dsn: str, tiny_model: Path, clips,
                                                 server_stops) -> None:  # fmt: skip
    remote = process_day(tmp_path, pg_dsn, tiny_model, clips)
    # The server trusts this test's PostgreSQL, so any password passes: it must show nowhere.
    server = serve(tmp_path, f"{pg_dsn} password=never-shown-pw", str(remote))
    server_stops.append(server)

    status, headers, body = server.get("/")
    home = body.decode()
    # The day's row: archives by state, members done/failed/rejected, hours, x realtime, segments, report.
    row = re.search(rf'<tr>\s*<td><a href="/days/{DAY}">.*?</tr>', home, flags=re.S)
    assert status == 200 and row is not None, home[-3000:]
    cells = [
        re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(0), re.S)
    ]
    assert cells[1:5] == ["done 1", "4", "0", "1"] and cells[7] == "4" and cells[8] == "report", cells
    policy = headers["content-security-policy"]
    assert (
        "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    )

    # A Range request: 206 and exactly those bytes of the FLAC.
    plain = clips[2][0]
    mid = member_id(pg_dsn, plain)
    flac = flac_of(remote, pg_dsn, plain).read_bytes()
    status, headers, body = server.get(f"/member/{mid}/flac", {"Range": "bytes=100-1099"})
    assert status == 206 and body == flac[100:1100]
    assert headers["content-range"] == f"bytes 100-1099/{len(flac)}"
    status, _, body = server.get(f"/member/{mid}/flac")
    assert status == 200 and body == flac
    # What a browser asks as it seeks (`bytes=N-`) is answered with a chunk: it asks for the next.
    status, headers, body = server.get(f"/member/{mid}/flac", {"Range": "bytes=100-"})
    assert status == 206 and body == flac[100 : 100 + MEDIA_CHUNK]

    # Downloads carry the member's name; subtitles as asked.
    status, headers, body = server.get(f"/member/{mid}/json?download=1")
    assert status == 200 and json.loads(body)["member"] == plain
    assert headers["content-disposition"].startswith("attachment")
    assert server.get(f"/member/{mid}/vtt")[2].startswith(b"WEBVTT")

    # No part of a URL reaches the filesystem: `..`, absolute paths, another member's id, a name.
    other = member_id(pg_dsn, clips[3][0])
    for path in (f"/member/{mid}/..", f"/member/{mid}/%2e%2e", f"/member/{mid}/..%2F..%2Fetc%2Fpasswd",
                 f"/member/{mid}/%2Fetc%2Fpasswd", f"/member/{mid}/{other}", f"/member/{mid}/flac/{other}",
                 "/member/..%2F..%2Fetc%2Fpasswd/flac", "/member/%2Fetc%2Fpasswd", f"/member/{mid}/wav",
                 "/member/999999/flac", "/static/..%2F..%2Fconfig.py", "/days/..%2F..%2Fetc"):  # fmt: skip
        status, _, body = server.get(path)
        assert status == 404, (path, status, body[:200])
        assert b"root:" not in body

    # Hostile names are text in every page; the page of a rejected member says what happened.
    for name in HOSTILE:
        page = server.get(f"/member/{member_id(pg_dsn, name)}")[2].decode()
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page or "&lt;img src=x onerror=alert(2)&gt;" in page
    status, _, body = server.get("/search?q=%3Cscript%3Ealert(3)%3C/script%3E")
    assert status == 200 and b"<script>alert(3)" not in body and b"&lt;script&gt;alert(3)" in body
    escaped = member_id(pg_dsn, "../escape.wav")
    status, _, body = server.get(f"/member/{escaped}")
    assert status == 404 and b"rejected, not done" in body and b"escapes" in body

    # Speakers: each segment named and coloured, the page filtered to one, a wrong one told.
    page = server.get(f"/member/{mid}")[2].decode()
    named = sorted(set(re.findall(r'<span class="who s\d">(S\d+)</span>', page)))
    assert named and named[0] == "S1" and f'href="/member/{mid}?speaker=S1"' in page
    status, _, body = server.get(f"/member/{mid}?speaker=S1")
    assert status == 200 and set(re.findall(r'<span class="who s\d">(S\d+)</span>', body.decode())) == {"S1"}
    status, _, body = server.get(f"/member/{mid}?speaker=%3Cb%3ES9")
    assert status == 400 and b"no speaker &#39;&lt;b&gt;S9&#39;" in body and b"<b>S9" not in body
    assert server.get(f"/member/{mid}/rttm")[2].startswith(b"SPEAKER ")

    # A member whose FLAC went missing: its page says so, its audio is 404.
    flac_of(remote, pg_dsn, plain).unlink()
    status, _, body = server.get(f"/member/{mid}")
    assert status == 404 and b"not at the destination" in body
    assert server.get(f"/member/{mid}/flac")[0] == 404

    # The day as JSON (the day page's updates) and the day's report under a policy of hashes.
    status, _, body = server.get(f"/api/days/{DAY}")
    day = json.loads(body)
    assert status == 200 and day["complete"] and day["archives"][0][1] == "done"
    status, headers, body = server.get(f"/days/{DAY}/report")
    assert status == 200 and b'<figure class="chart"><svg' in body
    # One x-realtime figure: `/`'s cell, the day page's totals and the report's summary.
    data = json.loads(re.search(rb'id="report-data">(.*?)</script>', body, re.S).group(1))
    assert cells[6] == f"{data['summary']['xrt']:.1f}" and f", {cells[6]}x realtime" in day["totals"], (
        cells,
        day["totals"],
    )
    assert re.fullmatch(r"default-src 'none'; script-src ('sha256-[A-Za-z0-9+/=]+' ?)+; .*",
                        headers["content-security-policy"])  # fmt: skip
    assert "never-shown-pw" not in server.log.read_text()
    assert "password=***" in server.log.read_text()


def _outward_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outward interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_off_loopback_a_token_is_required_and_checked(tmp_path: Path, pg_dsn: str, server_stops) -> None:
    assert main(["init-db", "--dsn", pg_dsn]) == 0
    refused = subprocess.run(
        [sys.executable, "-m", "streaming_pipeline", "serve", "--dsn", pg_dsn, "--remote", str(tmp_path),
         "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "not a loopback address: set a token" in refused.stderr

    token = "s3cret-token-" + "x" * 20
    address = _outward_address()
    server = serve(tmp_path, pg_dsn, str(tmp_path), host=address or "0.0.0.0", connect=address or "127.0.0.1",
                   env={"PIPELINE_SERVE_TOKEN": token})  # fmt: skip
    server_stops.append(server)
    assert server.get("/")[0] == 401
    assert server.get("/static/app.css")[0] == 401
    assert server.get("/", {"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
    assert server.get("/", {"Authorization": f"Bearer {token}"})[0] == 200
    status, headers, _ = server.get(f"/search?q=x&token={token}")
    assert status == 303 and headers["location"] == "/search?q=x"
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    assert server.get("/", {"Cookie": cookie})[0] == 200
    assert token not in server.log.read_text()  # the access log leaves the token out


@pytest.mark.slow
def test_a_read_only_role_serves_an_rsync_destination(tmp_path: Path, pg_dsn: str, tiny_model: Path, clips,
                                                      rsync_daemon, server_stops) -> None:  # fmt: skip
    """The README's read-only role is all the server needs; an rsync destination's files are
    fetched on demand into the cache, and played with Range requests from there."""
    process_day(tmp_path, pg_dsn, tiny_model, clips, remote=rsync_daemon.url)
    role = f"viewer_{tmp_path.name[-12:].replace('-', '_').lower()}"
    dbname = pg_dsn.rsplit("dbname=", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        for statement in README_GRANTS:
            conn.execute(statement.replace("viewer", f'"{role}"').replace("pipeline", f'"{dbname}"'))
    viewer = pg_dsn.replace("user=postgres", f"user={role}")
    try:
        server = serve(tmp_path, viewer, rsync_daemon.url, "--audio-cache-mb", "1")
        server_stops.append(server)
        plain = clips[2][0]
        mid = member_id(pg_dsn, plain)
        status, _, body = server.get(f"/member/{mid}")
        assert status == 200 and b'<audio id="player"' in body
        relpath = query(pg_dsn, "SELECT remote_path FROM audio_files WHERE id = %s", mid)[0]["remote_path"]
        flac = (rsync_daemon.data / relpath.split("/archive/", 1)[1]).read_bytes()
        status, _, body = server.get(f"/member/{mid}/flac", {"Range": "bytes=10-99"})
        assert status == 206 and body == flac[10:100]
        assert list((tmp_path / "serve-scratch" / "web-cache").rglob("*.flac"))
        assert server.get("/search?q=a")[0] == 200 and server.get(f"/days/{DAY}")[0] == 200
    finally:
        for s in server_stops:
            s.proc.terminate()
            s.proc.wait(timeout=20)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


# The read-only role as the README grants it (docs: the web view).
README_GRANTS = [
    "GRANT CONNECT ON DATABASE pipeline TO viewer",
    "GRANT USAGE ON SCHEMA public TO viewer",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO viewer",
]


def test_a_database_it_cannot_read_is_one_clear_line(tmp_path: Path, pg_dsn: str) -> None:
    nowhere = pg_dsn.rsplit("dbname=", 1)[0] + "dbname=nowhere password=never-shown-pw"
    for dsn, said in ((pg_dsn, "run streaming-pipeline init-db"), (nowhere, "nowhere")):
        refused = subprocess.run(
            [sys.executable, "-m", "streaming_pipeline", "serve", "--dsn", dsn, "--remote", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode != 0 and said in refused.stderr, refused.stderr
        assert "never-shown-pw" not in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_a_member_page_shows_what_made_its_transcript_and_what_it_replaced(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, server_stops
) -> None:
    remote = process_day(tmp_path, pg_dsn, tiny_model, clips)
    options = [*worker_options(tmp_path, pg_dsn, tiny_model), *local_day_options(tmp_path)]
    options[options.index("--beam-size") + 1] = "2"  # other settings: every transcript is stale
    assert main(["retranscribe", DAY, "--timestamps", "word", "--subtitles", "srt,vtt", *options]) == 0
    server = serve(tmp_path, pg_dsn, str(remote))
    server_stops.append(server)
    page = server.get(f"/member/{member_id(pg_dsn, clips[2][0])}")[2].decode()
    now, _, replaced = page.partition("Transcripts it replaced")
    assert "tiny-whisper" in now and "batched, beam 2" in now  # the provenance of the current one
    assert replaced and "(batched, beam 1)" in replaced and "replaced 20" in replaced

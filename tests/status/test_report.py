"""`report`: a day as one self-contained HTML file, checked in a real headless browser (Debian's
chromium, installed by the test setup) with the network off."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import psycopg
import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.state.store import ProgressStore

from ..conftest import DAY, REPO, add_bytes, make_day, query

# timeline, throughput (audio; members and workers), x realtime, stage seconds, reasons, languages,
# durations; no GPU
CHARTS = 8


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.fail("chromium is not installed (scripts/install-deps.sh installs it)")
    return exe


def open_in_browser(page: Path, tmp_path: Path, screenshot: Path | None = None) -> dict[str, str]:
    """Load `page` in headless chromium with every host unresolvable and no proxy reachable (the
    network off), let its scripts run, and return the <body> data attributes the report sets."""
    base = [
        chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9", "--window-size=1400,5200",
    ]  # fmt: skip
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    if screenshot is not None:
        shot = subprocess.run(
            [*base, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, timeout=180
        )
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:2000]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    attrs["dom"] = dom.stdout
    return attrs


def _broken_archive(tmp_path: Path, clips) -> Path:
    path = tmp_path / "input" / DAY / "09_00.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        for name, data in clips[:2]:
            add_bytes(tar, name, data)
        add_bytes(tar, "broken/corrupt.wav", b"RIFF....WAVEjunkjunkjunk" * 10)
        add_bytes(tar, "evil-link.wav", b"", type=tarfile.SYMTYPE, linkname="/etc/shadow")
    return path


@pytest.mark.slow
def test_report_of_a_processed_day_draws_every_view_offline(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, capsys
) -> None:
    make_day(tmp_path, ["08_00", "08_30"], members=3)
    _broken_archive(tmp_path, clips)
    logs = tmp_path / "logs"
    options = [
        "--dsn", pg_dsn, "--remote", str(tmp_path / "remote"), "--scratch-dir", str(tmp_path / "scratch"),
        "--model", str(tiny_model), "--device", "cpu", "--beam-size", "1", "--num-workers", "1",
        "--stream-batch-size", "2",
    ]  # fmt: skip
    rc = main(["process-day", DAY, "--executor", "local", "--input-root", str(tmp_path / "input"),
               "--log-dir", str(logs), *options])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    written = logs / f"report_{DAY}.html"
    assert f"report: {written.resolve()}" in out, "the local executor writes the day's report"
    # A second run of one archive (a rerun): the report shows both runs of it.
    archive = tmp_path / "input" / DAY / "08_00.tar.xz"
    assert main(["process-tar", DAY, str(archive), "08_00", *options]) == 0
    page = tmp_path / "day.html"
    assert main(["report", DAY, "--out", str(page), "--dsn", pg_dsn]) == 0
    text = page.read_text(encoding="utf-8")

    for slot in ("08_00", "08_30", "09_00"):
        assert f"{DAY}/{slot}.tar.xz" in text
    assert "cannot decode: soundfile" in text and "symbolic link to" in text
    # Self-contained: no element loads anything, and the page is small (plotly.js inline made it
    # 4.8 MB; the charts are SVG drawn by the server).
    assert not re.search(r"<(script|link|img|iframe|image|use)[^>]*\s(src|href)=", text)
    assert "http://" not in text and "https://" not in text
    assert len(text.encode()) < 200_000, len(text.encode())
    data = json.loads(
        re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S).group(1)
    )
    assert data["summary"]["archives_done"] == 3 and data["summary"]["members_failed"] == 1
    assert data["summary"]["members_rejected"] == 1 and data["summary"]["runs"] == 4
    assert sum(r["label"].endswith("#2") for r in data["runs"]) == 1, "the rerun is its own row"
    assert set(data["timeline"]["bars"]) == {"extract", "convert", "transcribe", "upload"}
    quality = data["quality"]
    assert quality["timed_share"] == 1.0 and quality["word_share"] == 0.0, "the default: --timestamps segment"
    assert quality["subtitled_share"] == pytest.approx(1.0 - quality["empty_share"]), (
        "an SRT per member with speech"
    )

    artifacts = Path(os.environ.get("PIPELINE_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    rendered = open_in_browser(page, tmp_path, screenshot=artifacts / "report.png")
    assert json.loads(rendered["errors"]) == [], "no JavaScript errors"
    assert int(rendered["charts"]) == CHARTS
    assert "members with timed segments" in rendered["dom"]
    capsys.readouterr()
    main(["status", DAY, "--json", "--dsn", pg_dsn])
    day = json.loads(capsys.readouterr().out)
    shown = {a["archive"]: a["x_realtime"] or 0.0 for a in day["archives"]}
    assert {a["archive"]: a["xrt"] for a in data["per_archive"]} == shown, "status's x-realtime rule"
    assert data["summary"]["xrt"] == day["totals"]["x_realtime"] > 0, "one figure for the day, as `/` shows"
    (made,) = quality["models"]  # one model made every done member's transcript
    assert made["model"] == "tiny-whisper" and made["members"] == done_members(pg_dsn)
    assert re.search(r'<table id="models">.*?tiny-whisper', rendered["dom"], re.S)
    for chart in ("timeline", "throughput", "xrt", "stages", "reasons", "languages", "durations"):
        block = re.search(rf'<div id="{chart}">(.*?)</div>', text, re.S)
        assert block and '<svg viewBox="0 0 ' in block.group(1), f"{chart} is drawn"
        assert block.group(1).count("<rect") + block.group(1).count("<polyline") > 0, f"{chart} has marks"
    # Every archive's bar says its figure: the x-realtime chart's titles are status's numbers.
    xrt = re.search(r'<div id="xrt">(.*?)</div>', text, re.S).group(1)
    for a in data["per_archive"]:
        assert f"<title>{a['slot']}: x realtime " in xrt
    assert "No GPU samples were recorded" in text
    status = subprocess.run(
        ["streaming-pipeline", "status", DAY, "--dsn", pg_dsn], capture_output=True, text=True,
        env={**os.environ, "PIPELINE_LOG_DIR": str(logs)}, cwd=REPO,
    )  # fmt: skip
    assert f"report: {written.resolve()}" in status.stdout


def done_members(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) AS n FROM audio_files WHERE status = 'done'")[0]["n"])


def _synthetic_day(dsn: str, archives: int = 48, members: int = 20_000) -> None:
    """A 48-archive, 20,000-member day written straight into the tables (no audio): 100 stream
    batches per archive, a requeue, 2% failed and 1% rejected members, GPU samples on 6 nodes."""
    day = dt.date.fromisoformat(DAY)
    t0 = dt.datetime(2025, 1, 25, 6, 0, tzinfo=dt.UTC)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for a in range(archives):
            slot = f"{a // 2:02d}_{(a % 2) * 30:02d}"
            key = f"{DAY}/{slot}.tar.xz"
            start = t0 + dt.timedelta(minutes=10 * (a % 8))
            cur.execute(
                "INSERT INTO archives (archive, day, slot, path, state, started_at, finished_at, wall_s,"
                " host) VALUES (%s, %s, %s, %s, 'done', %s, %s, 3600, %s)",
                (key, day, slot, f"/data/{key}", start, start + dt.timedelta(hours=1), f"node{a % 6:02d}"),
            )
            for run in range(2 if a == 5 else 1):
                begin = start + dt.timedelta(minutes=30 * run)
                cur.execute(
                    "INSERT INTO archive_runs (archive, day, host, slurm_job_id, restarts, started_at,"
                    " finished_at, state, audio_s) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (key, day, f"node{a % 6:02d}", f"100_{a}", run, begin, begin + dt.timedelta(minutes=30),
                     "interrupted" if run == 0 and a == 5 else "done", 7200.0),
                )  # fmt: skip
                run_id = cur.fetchone()[0]
                cur.executemany(
                    "INSERT INTO gpu_samples (run_id, at, gpu, busy, memory_mb) VALUES (%s, %s, 0, %s, %s)",
                    [
                        (run_id, begin + dt.timedelta(seconds=20 * i), 0.6 + 0.3 * (i % 3) / 2, 30_000.0)
                        for i in range(90)
                    ],
                )
                rows = []
                for b in range(100):
                    for k, stage in enumerate(("extract", "convert", "transcribe", "upload")):
                        s = begin + dt.timedelta(seconds=18 * b + 4 * k)
                        rows.append((run_id, b, stage, s, s + dt.timedelta(seconds=9), 4, 72.0))
                cur.executemany(
                    "INSERT INTO batch_stages (run_id, batch, stage, started_at, ended_at, members, audio_s)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    rows,
                )
            per = members // archives + (1 if a < members % archives else 0)
            with cur.copy(
                "COPY audio_files (day, slot, archive, member, status, duration_s, transcript, language,"
                " error, fallback) FROM STDIN"
            ) as copy:
                for m in range(per):
                    status = "failed" if m % 50 == 0 else "rejected" if m % 100 == 1 else "done"
                    error = {
                        "failed": f"cannot decode: soundfile: bad header {m}",
                        "rejected": "symbolic link to '/etc/passwd'",
                    }.get(status)
                    text = "" if m % 40 == 0 else f"words {m}"
                    language = ("en", "fr", "de", "zh")[m % 4]
                    row = (day, slot, key, f"show/{m:05d}.wav", status, 2 + (m % 300) / 7.0, text, language)
                    copy.write_row((*row, error, m % 9 == 0))


@pytest.mark.slow
def test_report_of_a_20000_member_day_is_small_and_quick(tmp_path: Path, pg_dsn: str) -> None:
    store = ProgressStore(pg_dsn)
    store.init_schema()
    store.close()
    _synthetic_day(pg_dsn)
    # One archive still held by a worker: the report names it and its lease's expiry.
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "UPDATE archives SET state = 'running', lease_until = now() + interval '90 s', host = 'node7',"
            " slurm_job_id = '88_7' WHERE archive = (SELECT min(archive) FROM archives)"
        )
    page = tmp_path / "big.html"
    started = time.monotonic()
    assert main(["report", DAY, "--out", str(page), "--dsn", pg_dsn]) == 0
    built = time.monotonic() - started
    size = page.stat().st_size
    assert size < 1024**2, f"{size} bytes"
    data = json.loads(
        re.search(r'id="report-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S).group(1)
    )
    summary = data["summary"]
    assert summary["members_done"] + summary["members_failed"] + summary["members_rejected"] == 20_000
    assert summary["archives"] == 48 and summary["runs"] == 49
    assert len(data["failures"]) == 200 and data["failures_total"] > 200
    assert summary["gpu_hours"] > 0 and len(data["gpu"]) == 6, "one GPU series per node"
    (held,) = data["held"]
    assert held["owner"] == "88_7@node7" and held["state"] == "running" and held["lease_until"]
    rendered = open_in_browser(page, tmp_path)
    assert json.loads(rendered["errors"]) == []
    assert int(rendered["charts"]) == CHARTS + 2, "with the GPU's busy and memory"
    render_ms = int(rendered["render-ms"])
    print(
        f"20,000-member report: {size / 1e6:.2f} MB, built in {built:.1f} s, rendered in {render_ms} ms"
        f" (charts and tables {rendered['script-ms']} ms)"
    )
    # Printed, not held to a tight bound (a loaded machine renders slower): this catches a page
    # that hangs or grows quadratically (the printed figure is the measurement).
    assert render_ms < 30_000

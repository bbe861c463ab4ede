"""process-tar end to end: real archive, real PostgreSQL, real rsync, real faster-whisper."""

from __future__ import annotations

import io
import json
import lzma
import tarfile
from pathlib import Path

import psycopg
import pytest
import soundfile as sf

from streaming_pipeline.cli import main

from ..conftest import RsyncDaemon, add_bytes

DAY = "2025-01-25"


def _args(archive: Path, dsn: str, remote: str, tmp_path: Path, tiny_model: Path, *extra: str) -> list[str]:
    return [
        "process-tar", DAY, str(archive), "12_30",
        "--dsn", dsn, "--remote", remote, "--scratch-dir", str(tmp_path / "scratch"),
        "--model", str(tiny_model), "--device", "cpu", "--beam-size", "1",
        "--num-workers", "2", "--stream-batch-size", "3", "--upload-retries", "2",
        "--upload-timeout", "20", *extra,
    ]  # fmt: skip


def _rows(dsn: str) -> dict[str, dict]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM audio_files")
        return {r["member"]: r for r in cur}


def _archive_row(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM archives")
        return cur.fetchone()


@pytest.mark.slow
@pytest.mark.parametrize(
    "decoding",
    [
        ("--decoder", "batched", "--decode-batch-size", "4", "--transcribe-workers", "2"),
        ("--decoder", "per-member", "--transcribe-workers", "2"),  # faster-whisper's transcribe, 2 at once
    ],  # both with word times and both subtitle formats (_args)
    ids=["batched", "per-member"],
)
def test_mixed_archive_to_rsync_daemon_then_rerun_uploads_nothing(
    tmp_path: Path,
    pg_dsn: str,
    rsync_daemon: RsyncDaemon,
    tiny_model: Path,
    clips,
    capsys,
    caplog,
    decoding: tuple[str, ...],
) -> None:
    archive = tmp_path / "input" / DAY / "12_30.tar.xz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:xz") as tar:
        for name, data in clips:
            add_bytes(tar, name, data)
        add_bytes(tar, "broken/corrupt.wav", b"RIFF....WAVEjunkjunkjunk" * 10)
        add_bytes(tar, "../../outside.wav", clips[0][1])
        add_bytes(tar, "evil-link.wav", b"", type=tarfile.SYMTYPE, linkname="/etc/shadow")

    workers = (*decoding, "--timestamps", "word", "--subtitles", "srt,vtt")
    rc = main(_args(archive, pg_dsn, rsync_daemon.url, tmp_path, tiny_model, *workers))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "done 6, failed 1, rejected 2, pending 0" in out

    rows = _rows(pg_dsn)
    assert len(rows) == 9
    for name, _ in clips:
        row = rows[name]
        assert row["status"] == "done" and row["day"].isoformat() == DAY and row["slot"] == "12_30"
        stem = name.rsplit(".", 1)[0]
        flac = rsync_daemon.data / DAY / "12_30" / f"{stem}.flac"
        meta = json.loads((rsync_daemon.data / DAY / "12_30" / f"{stem}.json").read_text())
        info = sf.info(str(flac))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert meta["member"] == name and meta["archive"] == f"{DAY}/12_30.tar.xz"
        assert meta["text"] == row["transcript"] and meta["language"] == row["language"]
        assert row["remote_path"].endswith(f"/{DAY}/12_30/{stem}.flac")
        assert abs(row["duration_s"] - info.duration) < 0.01
        assert row["timestamps"] == "word"
        previous_end = 0.0
        for segment in meta["segments"]:
            assert previous_end <= segment["start"] <= segment["end"] <= info.duration + 1e-3
            assert all(segment["start"] <= w["start"] <= w["end"] <= segment["end"] for w in segment["words"])
            previous_end = segment["end"]
        for suffix in (".srt", ".vtt"):
            subtitle = flac.with_suffix(suffix)
            assert subtitle.is_file() == bool(meta["text"]), (
                f"{name}: a subtitle file exactly when there is speech"
            )
        assert row["subtitles"] == ("srt,vtt,rttm" if meta["text"] else "rttm")  # speaker turns: none
    assert rows["broken/corrupt.wav"]["status"] == "failed"
    assert "decode" in rows["broken/corrupt.wav"]["error"]
    assert rows["../../outside.wav"]["status"] == "rejected"
    assert rows["evil-link.wav"]["error"].startswith("symbolic link")
    assert not (tmp_path / "outside.wav").exists() and not list(rsync_daemon.root.glob("**/outside.flac"))
    assert _archive_row(pg_dsn)["state"] == "done"
    assert not any((tmp_path / "scratch").rglob("*.*")), "scratch is emptied"
    upload_lines = [r.message for r in caplog.records if "upload" in r.message]
    assert upload_lines

    # Rerun: nothing done is re-extracted or re-uploaded.
    mtimes = {p: p.stat().st_mtime_ns for p in rsync_daemon.data.rglob("*.flac")}
    caplog.clear()
    rc = main(_args(archive, pg_dsn, rsync_daemon.url, tmp_path, tiny_model, *workers))
    assert rc == 0
    assert not [r for r in caplog.records if r.name == "streaming_pipeline.stages.upload"]
    assert {p: p.stat().st_mtime_ns for p in rsync_daemon.data.rglob("*.flac")} == mtimes
    assert {m: r["status"] for m, r in _rows(pg_dsn).items()} == {m: r["status"] for m, r in rows.items()}


@pytest.mark.slow
def test_truncated_archive_finishes_what_was_read(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, make_archive, capsys
) -> None:
    archive = make_archive([(f"n{i}/{name}", data) for i in range(3) for name, data in clips[:3]])
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * 0.6)])
    rc = main(_args(archive, pg_dsn, str(tmp_path / "remote"), tmp_path, tiny_model))
    assert rc == 1
    rows = _rows(pg_dsn)
    assert 0 < len(rows) < 9 and all(r["status"] == "done" for r in rows.values())
    assert all((tmp_path / "remote" / DAY / "12_30" / (m.rsplit(".", 1)[0] + ".flac")).exists() for m in rows)
    arch = _archive_row(pg_dsn)
    assert arch["state"] == "damaged" and "damaged" in arch["error"]


@pytest.mark.slow
def test_dead_destination_marks_nothing_done(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, make_archive, capsys
) -> None:
    archive = make_archive(clips[:2])
    rc = main(_args(archive, pg_dsn, "rsync://127.0.0.1:9/nowhere", tmp_path, tiny_model))
    out = capsys.readouterr().out
    assert rc == 1
    assert "rsync exit 10" in out
    rows = _rows(pg_dsn)
    assert rows and all(r["status"] == "failed" and "upload failed" in r["error"] for r in rows.values())
    assert _archive_row(pg_dsn)["state"] == "failed"


def test_wrong_dsn_fails_before_any_work(tmp_path: Path, tiny_model: Path, make_archive, capsys) -> None:
    archive = make_archive([("a.wav", b"x")])
    dsn = "host=127.0.0.1 port=1 user=alice password=HunTer2Secret dbname=x connect_timeout=2"
    # Refused connections are waited for (a restarting server looks the same): here for 1 s.
    rc = main([*_args(archive, dsn, str(tmp_path / "remote"), tmp_path, tiny_model), "--db-patience", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if line.startswith("streaming-pipeline: error")]
    assert len(lines) == 1 and "database" in lines[0]
    assert "HunTer2Secret" not in err
    assert not (tmp_path / "remote").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.__setitem__(1, "2025-13-40"), "bad date"),
        (lambda a: a.__setitem__(2, "/nonexistent/x.tar.xz"), "no such archive"),
        (lambda a: a.__setitem__(a.index("--scratch-dir") + 1, "/proc/forbidden"), "scratch dir"),
        (lambda a: a.__setitem__(a.index("--model") + 1, "/nonexistent/model"), "model directory"),
    ],
    ids=["date", "archive", "scratch", "model"],
)
def test_bad_invocations_fail_with_one_line(
    tmp_path: Path, tiny_model: Path, make_archive, capsys, change, message
) -> None:
    archive = make_archive([("a.wav", b"x")])
    args = _args(archive, "host=127.0.0.1 port=1", str(tmp_path / "remote"), tmp_path, tiny_model)
    change(args)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "remote").exists()


def _pax(tar: tarfile.TarFile, name: str, data: bytes, pax: dict[str, str] | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.pax_headers = dict(pax or {})
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.slow
def test_real_archive_names_and_formats_each_get_their_status(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, capsys, caplog
) -> None:
    """Members that share a stem, formats only PyAV reads, names no path or database can hold, a
    sparse member declaring 10 GiB, and then a damaged header: every case gets its named status,
    nothing is written outside scratch, no traceback."""
    import shutil
    import subprocess

    from streaming_pipeline.tools.samples import PYAV_VARIANTS, encode_pyav, speak

    samples, rate = speak("The same talk, recorded twice.")
    wav = next(data for name, data in clips if name.endswith(".wav"))
    mp3 = next(data for name, data in clips if name.endswith(".mp3"))
    m4a = encode_pyav(samples, rate, PYAV_VARIANTS[0])
    webm = encode_pyav(samples, rate, PYAV_VARIANTS[2])
    plain = tmp_path / "day.tar"
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
        _pax(tar, "show/talk.wav", wav)
        _pax(tar, "show/talk.mp3", mp3)
        _pax(tar, "show/talk.m4a", m4a)
        _pax(tar, "show/interview.webm", webm)
        _pax(tar, "x", wav, {"path": ""})
        _pax(tar, ".", wav)
        _pax(tar, "x", wav, {"path": "nul\x00name.wav"})
        _pax(tar, "bad\udcff.wav", wav)  # a byte that is not UTF-8 (pax hdrcharset=BINARY)
    holes = tmp_path / "src" / "holes.wav"
    holes.parent.mkdir()
    with open(holes, "wb") as fh:
        fh.write(wav[:44])
        fh.truncate(10 * 1024**3)
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    subprocess.run(
        ["tar", "--format=pax", "--sparse", "-rf", str(plain), "-C", str(holes.parent), "holes.wav"],
        check=True,
    )
    with tarfile.open(plain, "a", format=tarfile.PAX_FORMAT) as tar:
        _pax(tar, "show/after.wav", wav)
        _pax(
            tar,
            "broken.wav",
            b"x" * 10,
            {"GNU.sparse.size": "99", "GNU.sparse.map": "0,abc", "GNU.sparse.name": "b"},
        )
        _pax(tar, "show/never-read.wav", wav)
    archive = tmp_path / "input" / DAY / "12_30.tar.xz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(lzma.compress(plain.read_bytes()))
    plain.unlink()
    before = set(tmp_path.iterdir())

    rc = main(_args(archive, pg_dsn, str(tmp_path / "remote"), tmp_path, tiny_model))
    out = capsys.readouterr()
    assert rc == 1, out.out
    assert "Traceback" not in out.out + out.err + caplog.text
    rows = _rows(pg_dsn)
    status = {m: (r["status"], r["error"], r["audio_reader"]) for m, r in rows.items()}
    for name, reader in (("show/talk.wav", "soundfile"), ("show/talk.mp3", "soundfile"),
                          ("show/talk.m4a", "pyav"), ("show/interview.webm", "pyav"),
                          ("show/after.wav", "soundfile")):  # fmt: skip
        assert status[name][0] == "done" and status[name][2] == reader, (name, status[name])
    # Three members, one stem: each its own FLAC and JSON, the first under the plain name.
    remote = tmp_path / "remote" / DAY / "12_30" / "show"
    assert sorted(p.name for p in remote.glob("talk*.flac")) == [
        "talk.flac",
        "talk.m4a.flac",
        "talk.mp3.flac",
    ]
    assert json.loads((remote / "talk.m4a.json").read_text())["member"] == "show/talk.m4a"
    assert json.loads((remote / "talk.m4a.json").read_text())["source_reader"] == "pyav"
    assert rows["show/talk.mp3"]["remote_path"].endswith("/show/talk.mp3.flac")
    assert status[""][:2] == ("rejected", "empty name")
    assert status["."][:2] == ("rejected", "empty name")
    assert status["nul\\x00name.wav"][:2] == ("rejected", "name contains NUL")
    assert status["bad\\xff.wav"][:2] == ("rejected", "name is not valid UTF-8")
    assert status["holes.wav"][:2] == ("rejected", "sparse member (audio is never sparse)")
    assert "show/never-read.wav" not in status and "broken.wav" not in status
    (row,) = [_archive_row(pg_dsn)]
    assert row["state"] == "damaged"
    assert "damaged after 10 members: HeaderError: malformed member header (ValueError" in row["error"]
    assert set(tmp_path.iterdir()) <= before | {tmp_path / "remote", tmp_path / "scratch"}, (
        "nothing outside scratch"
    )
    assert not any((tmp_path / "scratch").rglob("*.*")), "scratch is emptied"


@pytest.mark.slow
@pytest.mark.parametrize("size", [2**66, 2**40], ids=["2^66", "2^40"])
def test_a_1kb_archive_declaring_an_absurd_member_ends_damaged_in_seconds_with_exit_1(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, size: int, capsys
) -> None:
    """The second member's header declares `size` bytes (GNU base-256) that the stream does not
    hold: the first member is done, the second has its row (bigint cannot hold 2^66: its size is
    in the reason), and the worker ends `damaged` with exit 1 instead of spinning for ever."""
    name, data = clips[0]
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_bytes(tar, name, data)
        info = tarfile.TarInfo("huge.wav")
        info.size = size
        tar.fileobj.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        tar.fileobj.write(b"x" * 512)
        tar.offset += 1024
    archive = tmp_path / "input" / DAY / "12_30.tar.xz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(lzma.compress(plain.getvalue()))
    rc = main(
        _args(
            archive, pg_dsn, str(tmp_path / "remote"), tmp_path, tiny_model, "--max-member-bytes", "100000000"
        )
    )
    assert rc == 1
    rows = _rows(pg_dsn)
    assert rows[name]["status"] == "done"
    assert (
        rows["huge.wav"]["status"] == "rejected"
        and f"declared size {size} exceeds" in rows["huge.wav"]["error"]
    )
    assert rows["huge.wav"]["size_bytes"] == (size if size < 2**63 else None)
    row = _archive_row(pg_dsn)
    assert row["state"] == "damaged" and "damaged after 2 members" in row["error"]
    assert "damaged" in capsys.readouterr().out


@pytest.mark.slow
def test_a_symlink_and_a_file_of_one_name_each_get_a_row(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips
) -> None:
    """Both used to share the key `a.wav`: one row overwrote the other. The first of a name keeps
    it; the second, a duplicate, gets its own key; every member seen has its outcome."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_bytes(tar, "a.wav", b"", type=tarfile.SYMTYPE, linkname="b.wav")
        add_bytes(tar, "a.wav", clips[0][1])
        add_bytes(tar, "b.wav", clips[1][1])
    archive = tmp_path / "input" / DAY / "12_30.tar.xz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(lzma.compress(plain.getvalue()))
    assert main(_args(archive, pg_dsn, str(tmp_path / "remote"), tmp_path, tiny_model)) == 0
    rows = {m: (r["status"], r["error"], r["full_name"]) for m, r in _rows(pg_dsn).items()}
    assert rows == {
        "a.wav": ("rejected", "symbolic link to 'b.wav'", None),
        "a.wav\\#1": ("rejected", "duplicate member name", "a.wav"),
        "b.wav": ("done", None, None),
    }
    assert _archive_row(pg_dsn)["state"] == "done"

"""process-day with the local executor, status, the archive lease, and the day's errors."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.config import build_config, config_env
from streaming_pipeline.state.lease import ArchiveBusy, ArchiveLease
from streaming_pipeline.state.records import ArchiveKey, Owner
from streaming_pipeline.state.store import ProgressStore

from ..conftest import DAY, REPO, SLOW_DECODING, local_day_options, make_day, query, worker_options


def _options(tmp_path: Path, dsn: str, model: Path) -> list[str]:
    return worker_options(tmp_path, dsn, model)


@pytest.mark.slow
def test_local_day_then_status_and_json(tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys) -> None:
    make_day(tmp_path, ["06_00", "06_30"], members=2)
    dsn = f"{pg_dsn} password=hunter2-secret"  # trust auth ignores it; it must never be printed
    day_args = local_day_options(tmp_path)
    rc = main(["process-day", DAY, *day_args, "--max-parallel", "2", *_options(tmp_path, dsn, tiny_model)])
    out = capsys.readouterr()
    assert rc == 0, out
    assert "2 archives, 0 already done, 0 being processed elsewhere, 2 to process" in out.out
    assert "2 archives (2 done); members done 4" in out.out
    logs = sorted(p.name for p in (tmp_path / "logs").glob(f"stream_tar_{DAY}_*.out"))
    assert [re.sub(r"local-\d+", "local-PID", name) for name in logs] == [
        f"stream_tar_{DAY}_06_00_local-PID.out",
        f"stream_tar_{DAY}_06_30_local-PID.out",
    ]
    assert len(list((tmp_path / "remote" / DAY).rglob("*.flac"))) == 4

    assert main(["status", DAY, "--dsn", dsn]) == 0
    text = capsys.readouterr().out
    header, *rows, models, searchable, total = text.strip().splitlines()
    assert header.split()[:4] == ["slot", "state", "done", "failed"]
    assert [r.split()[:3] for r in rows] == [["06_00", "done", "2"], ["06_30", "done", "2"]]
    assert re.fullmatch(r"transcripts: 4 by tiny-whisper \(settings [0-9a-f]{8}\)", models), models
    assert re.fullmatch(r"searchable: \d+ segments of 4 members", searchable), searchable
    assert total.startswith(f"{DAY}: 2 archives (2 done)")

    assert main(["status", DAY, "--json", "--dsn", dsn]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["complete"] is True and report["totals"]["done"] == 4
    for row in report["archives"]:
        assert row["state"] == "done" and row["done"] == 2 and row["audio_hours"] > 0
        assert row["x_realtime"] > 0 and row["elapsed_s"] > 0 and row["live"] is False

    # The same, for psql users: the views and the users' own query.
    (day_row,) = query(pg_dsn, "SELECT * FROM day_status")
    assert day_row["archives_done"] == 2 and day_row["members_done"] == 4
    recent = "SELECT COUNT(*) AS n FROM audio_files WHERE created_at > NOW() - INTERVAL '1 hour'"
    assert query(pg_dsn, recent)[0]["n"] == 4
    assert query(pg_dsn, "SELECT state, executor FROM days")[0] == {"state": "done", "executor": "local"}

    # A resubmitted day finds nothing to do.
    assert main(["process-day", DAY, *day_args, *_options(tmp_path, dsn, tiny_model)]) == 0
    assert "2 already done, 0 being processed elsewhere, 0 to process" in capsys.readouterr().out
    everything = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.out"))
    assert "hunter2-secret" not in everything + text + json.dumps(report)

    # A range: a day without archives is skipped, a done day is not redone, a new day is processed.
    make_day(tmp_path, ["07_00"], members=1, day="2025-01-26")
    days = "2025-01-24..2025-01-26"
    assert main(["process-day", days, *day_args, *_options(tmp_path, dsn, tiny_model)]) == 0
    out = capsys.readouterr().out
    assert "2025-01-24: skipped: no archives for 2025-01-24" in out
    assert f"{DAY}: 2 archives, 2 already done" in out and "2025-01-26: 1 archives, 0 already done" in out
    assert main(["status", days, "--dsn", dsn]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "2025-01-24: no archives recorded"
    assert lines[2].startswith("2025-01-26: 1 archives (1 done); members done 1")
    assert lines[3].startswith(f"{days}: 2 of 3 days recorded, 2 complete; archives 3, members done 5")
    assert main(["status", "2025-01-26", DAY, "--json", "--dsn", dsn]) == 0
    assert [d["day"] for d in json.loads(capsys.readouterr().out)["days"]] == [DAY, "2025-01-26"]
    assert (
        main(["finalize-day", "2025-01-25,2025-01-26", "--dsn", dsn, "--log-dir", str(tmp_path / "logs")])
        == 0
    )
    assert (tmp_path / "logs" / "report_2025-01-26.html").is_file()
    assert main(["export", "2025-01-25..2025-01-26", *_options(tmp_path, dsn, tiny_model)]) == 0
    assert "exported 4 members of 2025-01-25" in capsys.readouterr().out
    assert list((tmp_path / "remote" / "2025-01-26" / "parquet").rglob("*.parquet"))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("pgbouncer", path="/usr/sbin:/usr/bin:/sbin:/bin") is None,
    reason="pgbouncer is not installed (scripts/install-deps.sh installs it)",
)
def test_a_day_through_pgbouncer_in_transaction_mode(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys
) -> None:
    """The real workers (claim, heartbeat thread, fenced writes, upload callbacks) and the day's
    commands through PgBouncer in transaction mode with fewer server connections than workers:
    no session state, no server-side prepared statements (the simulation covers the claim and
    record code at scale; this, every query the pipeline makes)."""
    from psycopg.conninfo import conninfo_to_dict

    from streaming_pipeline.tools.scale import PgBouncer

    server = conninfo_to_dict(pg_dsn)
    state = Path(tempfile.mkdtemp(prefix="streaming-pipeline-test-pgbouncer-"))  # reachable by `postgres`
    bouncer = PgBouncer(state, int(server["port"]), pool_size=2, max_client_conn=50,
                        dbname=str(server["dbname"]), server_host=str(server["host"]))  # fmt: skip
    dsn = bouncer.start()
    try:
        make_day(tmp_path, ["08_00", "08_30", "09_00"], members=2)
        day_args = ["--executor", "local", "--input-root", str(tmp_path / "input"), "--log-dir",
                    str(tmp_path / "logs"), "--max-parallel", "3"]  # fmt: skip
        assert main(["process-day", DAY, *day_args, *_options(tmp_path, dsn, tiny_model)]) == 0
        assert "3 archives (3 done); members done 6" in capsys.readouterr().out
        assert main(["status", DAY, "--dsn", dsn]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"{DAY}: 3 archives (3 done)")
        assert main(["finalize-day", DAY, "--dsn", dsn, "--log-dir", str(tmp_path / "logs")]) == 0
        assert (tmp_path / "logs" / f"report_{DAY}.html").is_file()
    finally:
        bouncer.stop()
        shutil.rmtree(state, ignore_errors=True)
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.out"))
    assert "prepared statement" not in logs and "ERROR" not in logs
    runs = query(pg_dsn, "SELECT state FROM archive_runs")
    assert [r["state"] for r in runs] == ["done"] * 3


@pytest.mark.slow
def test_24_real_workers_on_a_server_with_12_slots_wait_for_one_instead_of_failing(
    tmp_path: Path, tiny_model: Path, capsys
) -> None:
    """The issue's try, with the real workers: a local day of 24 archives, 24 at once, straight
    against a server with max_connections=12. Before leases and patience, 20 of 24 exited at once."""
    import threading

    import psycopg

    from streaming_pipeline.state.embedded_pg import EmbeddedPostgres
    from streaming_pipeline.state.simulation import ScaleAudit
    from streaming_pipeline.tools.scale import watch_server_connections

    state = Path(tempfile.mkdtemp(prefix="streaming-pipeline-test-pg12-"))  # reachable by `postgres`
    server = EmbeddedPostgres(state, settings={"max_connections": "12"})
    dsn = server.start()
    observer = psycopg.connect(dsn, autocommit=True)  # first: the workers fill the server
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(
        target=watch_server_connections, args=(ScaleAudit(observer), stop, peak), daemon=True
    )
    try:
        make_day(tmp_path, [f"{h:02d}_00" for h in range(24)], members=1)
        watcher.start()
        argv = ["process-day", DAY, "--executor", "local", "--input-root", str(tmp_path / "input"),
                "--log-dir", str(tmp_path / "logs"), "--max-parallel", "24"]  # fmt: skip
        assert main([*argv, *_options(tmp_path, dsn, tiny_model)]) == 0
        assert "24 archives (24 done); members done 24, failed 0" in capsys.readouterr().out
        stop.set()
        watcher.join()
        assert peak[0] == 12  # the server was full ...
        logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("stream_tar_*.out"))
        assert "waiting for the database" in logs and "too many clients" in logs  # ... they waited
    finally:
        stop.set()
        observer.close()
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.slow
def test_sigterm_stops_local_day_cleanly_and_rerun_completes(
    tmp_path: Path, pg_dsn: str, tiny_model: Path
) -> None:
    make_day(tmp_path, ["08_00", "08_30"], members=8)
    argv = [
        sys.executable, "-m", "streaming_pipeline", "process-day", DAY, "--executor", "local",
        "--input-root", str(tmp_path / "input"), "--log-dir", str(tmp_path / "logs"),
        *_options(tmp_path, pg_dsn, tiny_model), *SLOW_DECODING,
    ]  # fmt: skip
    assert main(["init-db", "--dsn", pg_dsn]) == 0
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not query(pg_dsn, "SELECT 1 FROM audio_files WHERE status = 'done' LIMIT 1"):
        assert time.monotonic() < deadline and proc.poll() is None, "no member done"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    states = {r["slot"]: r for r in query(pg_dsn, "SELECT * FROM archives")}
    assert {r["state"] for r in states.values()} <= {"interrupted", "done"}
    assert any(r["state"] == "interrupted" for r in states.values())
    assert all(r["error"] == "stopped by SIGTERM" for r in states.values() if r["state"] == "interrupted")
    done_before = query(pg_dsn, "SELECT count(*) AS n FROM audio_files WHERE status = 'done'")[0]["n"]
    assert 0 < done_before < 16

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = query(pg_dsn, "SELECT archive, member, status FROM audio_files")
    assert len(rows) == 16 and {r["status"] for r in rows} == {"done"}
    assert len(list((tmp_path / "remote" / DAY).rglob("*.flac"))) == 16
    assert not list((tmp_path / "scratch").rglob("*.*"))  # scratch emptied
    # The day's report (written by the local executor) shows the interrupted run and its resumption.
    page = tmp_path / "logs" / f"report_{DAY}.html"
    assert f"report: {page.resolve()}" in rerun.stdout
    data = json.loads(
        re.search(r'id="report-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S).group(1)
    )
    states = sorted(r["state"] for r in data["runs"])
    assert "interrupted" in states and states.count("done") == 2
    assert any(r["error"] == "stopped by SIGTERM" for r in data["runs"])


def test_a_second_worker_on_a_held_archive_names_the_holder_and_does_nothing(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys
) -> None:
    (archive,) = make_day(tmp_path, ["10_00"], members=1)
    key = ArchiveKey.of(dt.date.fromisoformat(DAY), archive, "10_00")
    main(["init-db", "--dsn", pg_dsn])
    store = ProgressStore(pg_dsn)
    holder = ArchiveLease(store, key, path=str(archive), owner=Owner("977_3", "node42", 4242), lease_s=60)
    with holder:
        rc = main(["process-tar", DAY, str(archive), "10_00", *_options(tmp_path, pg_dsn, tiny_model)])
        assert rc == 0
        out = capsys.readouterr().out
        assert "is being processed by job 977_3 on node42 (pid 4242) (lease until" in out
        assert query(pg_dsn, "SELECT count(*) AS n FROM audio_files")[0]["n"] == 0
        with pytest.raises(ArchiveBusy):  # the same for a direct claimer
            ArchiveLease(ProgressStore(pg_dsn), key, path=str(archive), owner=Owner(None, "h", 1)).acquire()
        assert main(["status", DAY, "--json", "--dsn", pg_dsn]) == 0
        (row,) = json.loads(capsys.readouterr().out)["archives"]
        assert row["host"] == "node42" and row["slurm_job_id"] == "977_3" and row["pid"] == 4242
        assert row["lease_until"] and 50 < row["lease_left_s"] <= 60
        assert main(["status", DAY, "--dsn", pg_dsn]) == 0
        assert re.search(r"977_3@node42\s+\d+s", capsys.readouterr().out)  # owner and lease left
    store.close()
    assert query(pg_dsn, "SELECT lease_until FROM archives")[0]["lease_until"] is None  # released


def test_a_killed_holder_on_this_node_is_taken_over_at_once(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys
) -> None:
    (archive,) = make_day(tmp_path, ["11_00"], members=1)
    main(["init-db", "--dsn", pg_dsn])
    script = (
        "import os, socket, sys, time, datetime as dt\n"
        "from pathlib import Path\n"
        "from streaming_pipeline.state.records import ArchiveKey\n"
        "from streaming_pipeline.state.lease import ArchiveLease, Owner\n"
        "from streaming_pipeline.state.store import ProgressStore\n"
        "key = ArchiveKey.of(dt.date(2025, 1, 25), Path(sys.argv[2]), '11_00')\n"
        "owner = Owner(None, socket.gethostname(), os.getpid())\n"
        "store = ProgressStore(sys.argv[1])\n"
        "ArchiveLease(store, key, path=sys.argv[2], owner=owner, lease_s=600).acquire()\n"
        "print('leased', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, pg_dsn, str(archive)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "leased"
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup: its lease stays, 600 s long
    holder.wait()
    assert query(pg_dsn, "SELECT lease_until > now() AS held FROM archives")[0]["held"]
    started = time.monotonic()
    assert main(["process-tar", DAY, str(archive), "11_00", *_options(tmp_path, pg_dsn, tiny_model)]) == 0
    assert "done 1, failed 0" in capsys.readouterr().out
    assert time.monotonic() - started < 120  # not after the 600 s lease: its pid is gone here


def test_a_dead_holder_elsewhere_is_taken_over_when_its_lease_expires(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys
) -> None:
    (archive,) = make_day(tmp_path, ["11_30"], members=1)
    key = ArchiveKey.of(dt.date.fromisoformat(DAY), archive, "11_30")
    main(["init-db", "--dsn", pg_dsn])
    store = ProgressStore(pg_dsn)
    # A worker on a node that vanished: it claimed, and never renews; nothing here can tell.
    owner = Owner("5_0", "gone", 1)
    token = store.leases.claim(key, path=str(archive), owner=owner, lease_s=3, may_take=lambda h: False).token
    assert token == 1
    store.close()
    argv = ["process-tar", DAY, str(archive), "11_30", *_options(tmp_path, pg_dsn, tiny_model)]
    assert main(argv) == 0
    assert "is being processed by job 5_0 on gone" in capsys.readouterr().out
    time.sleep(3.5)
    assert main(argv) == 0
    assert "done 1, failed 0" in capsys.readouterr().out
    (row,) = query(pg_dsn, "SELECT lease_token, host FROM archives")
    assert row["lease_token"] == 2 and row["host"] != "gone"


def test_day_errors_are_clear(tmp_path: Path, pg_dsn: str, capsys) -> None:
    (tmp_path / "input").mkdir()
    assert main(["process-day", DAY, "--dsn", pg_dsn, "--input-root", str(tmp_path / "nope")]) == 2
    assert "input root" in capsys.readouterr().err
    assert main(["process-day", DAY, "--dsn", pg_dsn, "--input-root", str(tmp_path / "input")]) == 2
    assert f"no archives for {DAY}" in capsys.readouterr().err
    assert main(["status", DAY, "--dsn", pg_dsn]) == 2  # status never migrates: it says what to run
    assert "run streaming-pipeline init-db" in capsys.readouterr().err
    assert main(["init-db", "--dsn", pg_dsn]) == 0
    assert main(["status", DAY, "--dsn", pg_dsn]) == 1
    assert "no archives recorded" in capsys.readouterr().out


def test_config_round_trips_through_the_environment(tmp_path: Path) -> None:
    config = build_config(
        {"dsn": "host=db password=x", "remote": "/r", "model": "/m", "vad": False, "max_parallel": 3,
         "worker_sbatch_args": "--gres=none --mem=2G", "input_root": tmp_path, "log_dir": tmp_path / "logs",
         "upload_timeout": 7.5},
        {},
    )  # fmt: skip
    assert build_config({}, config_env(config)) == config


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_the_rerun_completes(
    tmp_path: Path, pg_dsn: str, tiny_model: Path
) -> None:
    (archive,) = make_day(tmp_path, ["13_00"], members=10)
    assert main(["init-db", "--dsn", pg_dsn]) == 0
    argv = [sys.executable, "-m", "streaming_pipeline", "process-tar", DAY, str(archive), "13_00"]
    argv += [*_options(tmp_path, pg_dsn, tiny_model), *SLOW_DECODING]
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not query(pg_dsn, "SELECT 1 FROM audio_files WHERE status = 'done' LIMIT 1"):
        assert time.monotonic() < deadline and proc.poll() is None, "no member done"
        time.sleep(0.2)
    pool = _spawned_children(proc.pid)
    assert pool, "the conversion pool should be running"
    proc.send_signal(signal.SIGTERM)
    # Two signals of one kind that arrive before the handler ran count once: wait until it ran.
    while "finishing in-flight work" not in log.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, "first signal not handled"
        time.sleep(0.05)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)  # another signal: the same one at once would be its echo
    proc.wait(timeout=30)
    assert time.monotonic() - signalled < 5, "the second signal did not exit promptly"
    assert proc.returncode == 128 + signal.SIGINT, log.read_text()
    assert "second signal (SIGINT): exiting now" in log.read_text()
    # No orphan: the conversion pool's processes follow their parent within a second.
    deadline = time.monotonic() + 5
    while alive := [pid for pid in pool if Path(f"/proc/{pid}").exists()]:
        assert time.monotonic() < deadline, f"orphaned pool processes: {alive}"
        time.sleep(0.2)
    # Killed without releasing: its lease stands, but this node sees its pid is gone.
    assert query(pg_dsn, "SELECT lease_until > now() AS held FROM archives")[0]["held"]

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = query(pg_dsn, "SELECT status FROM audio_files")
    assert len(rows) == 10 and {r["status"] for r in rows} == {"done"}


def _spawned_children(pid: int) -> list[int]:
    """The multiprocessing (spawn) children of `pid`: the conversion pool's processes."""
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "spawn_main" in line]

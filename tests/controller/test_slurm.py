"""The hpc/ scripts on a real single-node Slurm: a day's job array, reruns, resubmits, requeue."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import DAY, REPO, SLOW_DECODING, RsyncDaemon, make_day, query

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CPU_WORKER = "--gres=none --cpus-per-task=1 --mem=1G --time=00:10:00"


def _env(slurm: dict[str, str], tmp_path: Path, dsn: str, remote: str, model: Path) -> dict[str, str]:
    return {
        **slurm,
        "PATH": f"{Path(sys.executable).parent}:{slurm.get('PATH', '')}",
        "PIPELINE_DSN": dsn,
        "PIPELINE_REMOTE": remote,
        "PIPELINE_INPUT_ROOT": str(tmp_path / "input"),
        "PIPELINE_LOG_DIR": str(tmp_path / "logs"),
        "PIPELINE_SCRATCH": str(tmp_path / "scratch"),
        "PIPELINE_MODEL": str(model),
        "PIPELINE_DEVICE": "cpu",
        "PIPELINE_BEAM_SIZE": "1",
        "PIPELINE_NUM_WORKERS": "1",
        "PIPELINE_CPU_THREADS": "1",
        "PIPELINE_STREAM_BATCH_SIZE": "2",
        "PIPELINE_MAX_PARALLEL": "2",
        "PIPELINE_WORKER_SBATCH_ARGS": CPU_WORKER,
    }


def _sbatch(env: dict[str, str], cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().split(";")[0]


def _wait_for_line(log: Path, text: str, timeout: float, failure: str) -> None:
    """Until the job's log holds `text`."""
    deadline = time.monotonic() + timeout
    while text not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, failure
        time.sleep(0.5)


def _wait_gone(env: dict[str, str], job_ids: list[str], timeout: float = 300) -> None:
    """Until none of the jobs (array tasks included) is pending or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)], env=env, capture_output=True, text=True
        )
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(2)
    raise AssertionError(f"jobs {job_ids} still queued after {timeout}s")


def test_day_fan_out_partial_failure_resubmit_and_single_rerun(
    slurm: dict[str, str], tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path
) -> None:
    env = _env(slurm, tmp_path, pg_dsn, rsync_daemon.url, tiny_model)
    good = make_day(tmp_path, ["06_00", "06_30", "07_00"], members=3)
    broken = good[2].read_bytes()
    good[2].write_bytes(broken[: len(broken) // 2])  # truncated: this archive fails the first time

    controller = _sbatch(env, tmp_path, str(REPO / "hpc" / "process_day_streaming.sh"), DAY)
    _wait_gone(env, [controller])
    day_row = query(pg_dsn, "SELECT * FROM days WHERE day = %s", DAY)[0]
    assert day_row["submitted"] == 3 and day_row["executor"] == "slurm"
    _wait_gone(env, [day_row["array_job_id"], day_row["finalize_job_id"]])

    states = {r["slot"]: r for r in query(pg_dsn, "SELECT * FROM archive_status")}
    assert {s: r["state"] for s, r in states.items()} == {
        "06_00": "done",
        "06_30": "done",
        "07_00": "damaged",
    }
    assert states["06_00"]["slurm_job_id"] == f"{day_row['array_job_id']}_0"
    assert "is damaged after" in states["07_00"]["error"]
    assert query(pg_dsn, "SELECT state FROM days")[0]["state"] == "incomplete"
    logs = tmp_path / "logs"
    log_06 = logs / f"stream_tar_{DAY}_06_00_{day_row['array_job_id']}_0.out"
    text = log_06.read_text()
    assert "=== start" in text and "=== end" in text and "exit 0" in text
    assert "upload" in text and "done 3, failed 0" in text
    finalize_log = (logs / f"stream_day_{DAY}_finalize_{day_row['finalize_job_id']}.out").read_text()
    assert "2 done" in finalize_log and "1 damaged" in finalize_log

    # The broken archive is replaced; resubmitting the day submits only it.
    good[2].write_bytes(broken)
    first_array = day_row["array_job_id"]
    controller = _sbatch(env, tmp_path, str(REPO / "hpc" / "process_day_streaming.sh"), DAY)
    _wait_gone(env, [controller])
    day_row = query(pg_dsn, "SELECT * FROM days WHERE day = %s", DAY)[0]
    assert day_row["array_job_id"] != first_array and day_row["submitted"] == 1
    _wait_gone(env, [day_row["array_job_id"], day_row["finalize_job_id"]])
    controller_log = (tmp_path / f"stream_day_{controller}.out").read_text()
    assert "2 already done" in controller_log and "1 to process" in controller_log
    # Matched exactly: a glob's `*` could take a slot and another job's id for this array's id
    # (`..._06_30_25_1.out` for array 30).
    task_log = re.compile(rf"stream_tar_{DAY}_\d\d_\d\d_{day_row['array_job_id']}_\d+\.out")
    assert sorted(p.name for p in logs.iterdir() if task_log.fullmatch(p.name)) == [
        f"stream_tar_{DAY}_07_00_{day_row['array_job_id']}_0.out"
    ]
    assert query(pg_dsn, "SELECT state FROM days")[0]["state"] == "done"
    assert query(pg_dsn, "SELECT count(*) AS n FROM audio_files WHERE status = 'done'")[0]["n"] == 9
    flacs = sorted((rsync_daemon.data / DAY).rglob("*.flac"))
    assert len(flacs) == 9

    # A single-archive rerun of a done archive uploads nothing again.
    before = {p: p.stat().st_mtime_ns for p in flacs}
    rows_before = query(pg_dsn, "SELECT member, updated_at FROM audio_files ORDER BY member")
    job = _sbatch(
        env, tmp_path, *CPU_WORKER.split(), str(REPO / "hpc" / "process_single_tar_streaming.sh"),
        DAY, str(good[0]), "06_00",
    )  # fmt: skip
    _wait_gone(env, [job])
    rerun_log = (logs / f"stream_tar_{DAY}_06_00_{job}.out").read_text()
    assert "already done" in rerun_log and "exit 0" in rerun_log
    assert "skipped 3" in rerun_log and "files) queued" not in rerun_log  # no upload was started
    assert {p: p.stat().st_mtime_ns for p in flacs} == before
    assert query(pg_dsn, "SELECT member, updated_at FROM audio_files ORDER BY member") == rows_before


def test_usr1_stops_cleanly_requeues_and_the_next_run_resumes(
    slurm: dict[str, str], tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path
) -> None:
    env = {
        **_env(slurm, tmp_path, pg_dsn, rsync_daemon.url, tiny_model),
        "PIPELINE_TEMPERATURES": SLOW_DECODING[1],
        "PIPELINE_DECODE_BATCH_SIZE": SLOW_DECODING[3],
    }
    (archive,) = make_day(tmp_path, ["09_00"], members=12)
    job = _sbatch(
        env, tmp_path, *CPU_WORKER.split(), str(REPO / "hpc" / "process_single_tar_streaming.sh"),
        DAY, str(archive), "09_00",
    )  # fmt: skip
    log = tmp_path / "logs" / f"stream_tar_{DAY}_09_00_{job}.out"
    _wait_for_line(log, "batch 0:", 120, "worker never finished its first batch")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
    _wait_gone(env, [job], timeout=400)

    text = log.read_text()
    assert "SIGUSR1: finishing in-flight work" in text
    assert "requeueing job" in text
    assert text.count("=== start") == 2 and "(restart 1)" in text
    row = query(pg_dsn, "SELECT * FROM archives")[0]
    assert row["state"] == "done" and row["restarts"] == 1
    members = query(pg_dsn, "SELECT member, status FROM audio_files")
    assert len(members) == 12 and {m["status"] for m in members} == {"done"}
    assert len(list((rsync_daemon.data / DAY / "09_00").rglob("*.flac"))) == 12
    assert "resuming" in text.split("(restart 1)")[1]  # the second run skipped what was done


def test_a_range_of_days_is_split_into_arrays_at_max_array_size_with_a_finalize_per_day(
    slurm: dict[str, str], tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path
) -> None:
    env = _env(slurm, tmp_path, pg_dsn, rsync_daemon.url, tiny_model)
    days = ["2025-03-01", "2025-03-02", "2025-03-03"]
    for day in days:
        make_day(tmp_path, ["08_00", "08_30"], members=2, day=day)
    config = subprocess.run(
        ["scontrol", "show", "config"], env=env, capture_output=True, text=True, check=True
    )
    max_array = int(next(line.split("=")[1] for line in config.stdout.splitlines() if "MaxArraySize" in line))
    script = str(REPO / "hpc" / "process_day_streaming.sh")

    controller = _sbatch(env, tmp_path, script, "2025-03-01..2025-03-03")
    _wait_gone(env, [controller])
    controller_log = (tmp_path / f"stream_day_{controller}.out").read_text()
    rows = query(pg_dsn, "SELECT * FROM days ORDER BY day")
    assert [str(r["day"]) for r in rows] == days, controller_log
    arrays = sorted({job for r in rows for job in r["array_job_id"].split(",")})
    assert len(arrays) == -(-6 // max_array), controller_log  # ceil: no array above MaxArraySize
    if max_array < 6:  # the test cluster's 5: the third day spans both arrays
        assert len(rows[2]["array_job_id"].split(",")) == 2
    assert len({r["finalize_job_id"] for r in rows}) == 3  # one finalize per day
    _wait_gone(env, arrays + [r["finalize_job_id"] for r in rows], timeout=400)

    assert [r["state"] for r in query(pg_dsn, "SELECT state FROM days ORDER BY day")] == ["done"] * 3
    archives = query(pg_dsn, "SELECT day, state FROM archives")
    assert len(archives) == 6 and {a["state"] for a in archives} == {"done"}
    assert query(pg_dsn, "SELECT count(*) AS n FROM audio_files WHERE status = 'done'")[0]["n"] == 12
    for row in rows:
        log = tmp_path / "logs" / f"stream_day_{row['day']}_finalize_{row['finalize_job_id']}.out"
        assert "2 done" in log.read_text()
    status = subprocess.run(
        [sys.executable, "-m", "streaming_pipeline", "status", "2025-03-01..2025-03-03"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert "3 of 3 days recorded, 3 complete; archives 6, members done 12" in status.stdout, status.stderr

    # Resubmitting the range submits nothing: every archive is done.
    controller = _sbatch(env, tmp_path, script, "2025-03-01..2025-03-03")
    _wait_gone(env, [controller])
    controller_log = (tmp_path / f"stream_day_{controller}.out").read_text()
    assert controller_log.count("2 already done") == 3 and "submitted" not in controller_log
    assert [r["array_job_id"] for r in query(pg_dsn, "SELECT * FROM days ORDER BY day")] == [
        r["array_job_id"] for r in rows
    ]


def test_each_worker_job_scratches_in_its_own_tmpdir_after_the_controller_has_ended(
    slurm: dict[str, str], tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path
) -> None:
    """The local Slurm's TaskProlog gives each job its own TMPDIR and its Epilog deletes it, as
    a cluster does. The workers start after their controller job has ended (--begin), and each
    writes under its own job's TMPDIR, not under the controller's (which is gone)."""
    env = _env(slurm, tmp_path, pg_dsn, rsync_daemon.url, tiny_model)
    del env["PIPELINE_SCRATCH"]
    env["PIPELINE_WORKER_SBATCH_ARGS"] = f"{CPU_WORKER} --begin=now+20"
    make_day(tmp_path, ["06_00", "06_30"], members=2)
    controller = _sbatch(env, tmp_path, str(REPO / "hpc" / "process_day_streaming.sh"), DAY)
    _wait_gone(env, [controller])
    day_row = query(pg_dsn, "SELECT * FROM days WHERE day = %s", DAY)[0]
    queued = subprocess.run(
        ["squeue", "-h", "-o", "%T", "-j", day_row["array_job_id"]], env=env, capture_output=True, text=True
    ).stdout.split()
    assert queued and set(queued) == {"PENDING"}, "the workers must start after the controller ended"
    _wait_gone(env, [day_row["array_job_id"], day_row["finalize_job_id"]])

    assert {r["state"] for r in query(pg_dsn, "SELECT state FROM archives")} == {"done"}
    assert query(pg_dsn, "SELECT count(*) AS n FROM audio_files WHERE status = 'done'")[0]["n"] == 4
    scratches = []
    for log in sorted((tmp_path / "logs").glob(f"stream_tar_{DAY}_*.out")):
        found = re.search(r"scratch: (\S+)", log.read_text())
        assert found, f"no scratch line in {log.name}"
        scratches.append(Path(found.group(1)))
    job_dirs = [re.search(r"/tmp/job_(\d+)/streaming-pipeline/", str(s)) for s in scratches]
    assert len(scratches) == 2 and all(job_dirs), scratches
    jobs = {m.group(1) for m in job_dirs if m}
    assert len(jobs) == 2 and controller not in jobs  # one TMPDIR per worker job, none the controller's
    assert not any(s.exists() for s in scratches), "each job's Epilog deleted its TMPDIR"


def test_a_stop_while_the_destination_hangs_ends_within_the_grace_and_the_requeued_run_finishes(
    slurm: dict[str, str], tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path
) -> None:
    """The rsync daemon stops answering (SIGSTOP) while the worker uploads; USR1 to the job: the
    running rsync is ended after the grace, the archive recorded `interrupted` and the job
    requeued, all within the grace plus 15 s (it used to wait out rsync's retries and be
    killed at its limit, leaving the archive `running`). Then the daemon answers again and the
    requeued run finishes every member."""
    grace = 20
    env = {**_env(slurm, tmp_path, pg_dsn, rsync_daemon.url, tiny_model), "PIPELINE_STOP_GRACE": str(grace)}
    env["PIPELINE_UPLOAD_TIMEOUT"] = "600"
    (archive,) = make_day(tmp_path, ["09_30"], members=6)
    assert rsync_daemon.proc is not None
    rsync_daemon.proc.send_signal(signal.SIGSTOP)
    try:
        job = _sbatch(
            env, tmp_path, *CPU_WORKER.split(), str(REPO / "hpc" / "process_single_tar_streaming.sh"),
            DAY, str(archive), "09_30",
        )  # fmt: skip
        log = tmp_path / "logs" / f"stream_tar_{DAY}_09_30_{job}.out"
        _wait_for_line(log, "files) queued", 180, "the worker never queued an upload")
        time.sleep(2)  # rsync has connected to the stopped daemon and waits
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
        signalled = time.monotonic()
        while _job_state(env, job) == "RUNNING":
            assert time.monotonic() - signalled < grace + 15, "the job is still running past the grace"
            time.sleep(0.5)
        row = query(pg_dsn, "SELECT state, error FROM archives")[0]
        assert row["state"] == "interrupted" and "stopped by SIGUSR1" in row["error"]
    finally:
        rsync_daemon.proc.send_signal(signal.SIGCONT)
    _wait_gone(env, [job], timeout=400)
    text = log.read_text()
    assert re.search(r"ended \d running rsync\(s\): uploads still running at the end of the 20s grace", text)
    assert "requeueing job" in text
    assert text.count("=== start") == 2 and "(restart 1)" in text
    row = query(pg_dsn, "SELECT * FROM archives")[0]
    assert row["state"] == "done" and row["restarts"] == 1
    members = query(pg_dsn, "SELECT member, status FROM audio_files")
    assert len(members) == 6 and {m["status"] for m in members} == {"done"}
    assert len(list((rsync_daemon.data / DAY / "09_30").rglob("*.flac"))) == 6


def _job_state(env: dict[str, str], job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job], env=env, capture_output=True, text=True)
    return out.stdout.strip() or "GONE"


def test_retranscribe_fans_out_as_job_arrays_and_finalizes_the_day(
    slurm: dict[str, str], tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys
) -> None:
    """A day made locally with one model, re-transcribed by Slurm workers with another."""
    from streaming_pipeline.cli import main
    from streaming_pipeline.tools.tiny_model import generate_tiny_model

    from ..conftest import local_day_options, worker_options

    make_day(tmp_path, ["06_00", "06_30"], members=2)
    fast = ["--temperatures", "0"]
    assert (
        main(
            [
                "process-day",
                DAY,
                *local_day_options(tmp_path),
                *worker_options(tmp_path, pg_dsn, tiny_model),
                *fast,
            ]
        )
        == 0
    )
    flacs = {p: p.stat().st_mtime_ns for p in (tmp_path / "remote").rglob("*.flac")}
    other = generate_tiny_model(tmp_path / "tiny-other", seed=3)
    capsys.readouterr()
    rc = main([
        "retranscribe", DAY, "--executor", "slurm", "--hpc-dir", str(REPO / "hpc"),
        "--log-dir", str(tmp_path / "logs"), "--worker-sbatch-args", CPU_WORKER,
        *worker_options(tmp_path, pg_dsn, other), *fast,
    ])  # fmt: skip
    assert rc == 0
    assert "submitted 1 job array" in capsys.readouterr().out
    day_row = query(pg_dsn, "SELECT * FROM days WHERE day = %s", DAY)[0]
    assert day_row["executor"] == "slurm" and day_row["submitted"] == 2
    _wait_gone(slurm, [day_row["array_job_id"], day_row["finalize_job_id"]])
    assert {r["model"] for r in query(pg_dsn, "SELECT model FROM audio_files")} == {"tiny-other"}
    assert len(query(pg_dsn, "SELECT 1 FROM transcript_history WHERE model = 'tiny-whisper'")) == 4
    assert query(pg_dsn, "SELECT state FROM days")[0]["state"] == "done"
    assert {p: p.stat().st_mtime_ns for p in flacs} == flacs
    log = (tmp_path / "logs" / f"stream_tar_{DAY}_06_00_{day_row['array_job_id']}_0.out").read_text()
    assert "re-transcribed 2, left as they were 0, failed 0" in log and "exit 0" in log


def test_scancel_stops_a_day_without_requeueing_and_a_resubmit_finishes_it(
    slurm: dict[str, str], tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path
) -> None:
    """docs/getting-started.md's stop and rerun: `scancel` of a running day's jobs ends them
    (SIGTERM: the worker records its archive `interrupted` and does not requeue itself, which
    only the time limit's USR1 asks for); archives not started stay `pending`; submitting the
    day again finishes it."""
    env = {
        **_env(slurm, tmp_path, pg_dsn, rsync_daemon.url, tiny_model),
        "PIPELINE_TEMPERATURES": SLOW_DECODING[1],
        "PIPELINE_DECODE_BATCH_SIZE": SLOW_DECODING[3],
        "PIPELINE_MAX_PARALLEL": "1",
    }
    make_day(tmp_path, ["06_00", "06_30", "07_00"], members=8)
    controller = _sbatch(env, tmp_path, str(REPO / "hpc" / "process_day_streaming.sh"), DAY)
    _wait_gone(env, [controller])
    day_row = query(pg_dsn, "SELECT * FROM days WHERE day = %s", DAY)[0]
    deadline = time.monotonic() + 180
    while not query(pg_dsn, "SELECT 1 FROM archives WHERE state = 'running'"):
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.5)
    jobs = [str(day_row["array_job_id"]), str(day_row["finalize_job_id"])]
    subprocess.run(["scancel", *jobs], env=env, check=True)
    _wait_gone(env, jobs, timeout=120)

    states = {r["slot"]: r for r in query(pg_dsn, "SELECT slot, state, error, restarts FROM archives")}
    stopped = [s for s, r in states.items() if r["state"] == "interrupted"]
    assert len(stopped) == 1, states  # one at a time (PIPELINE_MAX_PARALLEL=1)
    assert states[stopped[0]]["error"] == "stopped by SIGTERM" and states[stopped[0]]["restarts"] == 0
    assert sorted(r["state"] for s, r in states.items() if s not in stopped) == ["pending", "pending"], states
    logs = tmp_path / "logs"
    (worker_log,) = logs.glob(f"stream_tar_{DAY}_{stopped[0]}_*.out")
    text = worker_log.read_text()
    assert "SIGTERM: finishing in-flight work" in text and "requeueing job" not in text
    assert text.count("=== start") == 1

    again = _sbatch(env, tmp_path, str(REPO / "hpc" / "process_day_streaming.sh"), DAY)
    _wait_gone(env, [again])
    day_row = query(pg_dsn, "SELECT * FROM days WHERE day = %s", DAY)[0]
    _wait_gone(env, [day_row["array_job_id"], day_row["finalize_job_id"]], timeout=400)
    assert {r["state"] for r in query(pg_dsn, "SELECT state FROM archives")} == {"done"}
    assert query(pg_dsn, "SELECT state FROM days")[0]["state"] == "done"
    assert query(pg_dsn, "SELECT count(*) AS n FROM audio_files WHERE status = 'done'")[0]["n"] == 24


def test_a_day_with_more_archives_than_max_array_size_runs_every_one(
    slurm: dict[str, str], tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path
) -> None:
    """One day split into two arrays (the test cluster's MaxArraySize is 5): each array reads a
    manifest of its own (they once shared a name, and the first array's tasks past the second's
    length found no line)."""
    env = _env(slurm, tmp_path, pg_dsn, rsync_daemon.url, tiny_model)
    make_day(tmp_path, [f"{h:02d}_00" for h in range(6, 12)], members=1)
    controller = _sbatch(env, tmp_path, str(REPO / "hpc" / "process_day_streaming.sh"), DAY)
    _wait_gone(env, [controller])
    row = query(pg_dsn, "SELECT * FROM days WHERE day = %s", DAY)[0]
    arrays = row["array_job_id"].split(",")
    _wait_gone(env, [*arrays, row["finalize_job_id"]], timeout=400)
    manifests = sorted((tmp_path / "logs" / "manifests").glob("*.tsv"))
    lines = [len(m.read_text().splitlines()) for m in manifests]
    assert len(arrays) == len(manifests) and sum(lines) == 6, (arrays, lines)
    assert {r["state"] for r in query(pg_dsn, "SELECT state FROM archives")} == {"done"}
    assert query(pg_dsn, "SELECT state FROM days")[0]["state"] == "done"

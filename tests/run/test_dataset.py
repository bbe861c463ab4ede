"""process-dataset: a local Parquet dataset through conversion and transcription, out as shards."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from datasets import Audio, Features, Value, load_dataset

from streaming_pipeline.cli import main

from ..conftest import DAY, REPO, SLOW_DECODING, RsyncDaemon, make_day, query


def _source(folder: Path, clips: list[tuple[str, bytes]], rows: int, *, corrupt: int | None = None) -> list:
    """A Parquet dataset of `rows` rows (the clips, cycled), ids `utt-NN`; every third row has a
    reference text; row `corrupt` holds bytes that are not audio."""
    features = Features({"key": Value("string"), "audio": Audio(), "sentence": Value("string")})
    records = []
    for i in range(rows):
        name, data = clips[i % len(clips)]
        if i == corrupt:
            data = b"RIFF\x00\x00\x00\x00WAVEnot audio at all" * 4
        records.append({"key": f"utt-{i:02d}", "audio": {"bytes": data, "path": name},
                        "sentence": f"reference {i}" if i % 3 == 0 else ""})  # fmt: skip
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(records, schema=features.arrow_schema)
    pq.write_table(table, folder / "part-0.parquet", row_group_size=4)
    return [r["key"] for r in records]


def _args(source: Path, dsn: str, remote: str, tmp_path: Path, model: Path, *extra: str) -> list[str]:
    return [
        "process-dataset", str(source), "--dsn", dsn, "--remote", remote,
        "--scratch-dir", str(tmp_path / "scratch"), "--model", str(model), "--device", "cpu",
        "--beam-size", "1", "--num-workers", "2", "--stream-batch-size", "4",
        "--upload-retries", "2", "--upload-timeout", "20", *extra,
    ]  # fmt: skip


def _output(remote: Path, name: str) -> list[dict]:
    ds = load_dataset(str(remote / "datasets" / name), split="train", streaming=True)
    return list(ds.cast_column("audio", Audio(decode=False)))


@pytest.mark.slow
def test_limit_writes_shards_of_the_first_rows_and_keeps_reference_texts(
    tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path, clips, capsys
) -> None:
    ids = _source(tmp_path / "src", clips, 10, corrupt=2)
    rc = main(
        _args(tmp_path / "src", pg_dsn, rsync_daemon.url, tmp_path, tiny_model,
              "--id-column", "key", "--text-column", "sentence", "--limit", "7",
              "--upload-batch-size", "3", "--output-name", "out")
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "7 source rows done (6 written, 1 failed) in 3 shards" in out

    rows = _output(rsync_daemon.data, "out")
    assert [r["id"] for r in rows] == [i for i in ids[:7] if i != "utt-02"]
    for row in rows:
        audio, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert rate == 16000 and audio.ndim == 1 and len(audio) / 16000 == pytest.approx(row["duration_s"])
        n = int(row["id"][-2:])
        if n % 3 == 0:  # had a reference text: kept, not transcribed
            assert (row["transcript"], row["transcript_source"]) == (f"reference {n}", "source")
        else:
            assert row["transcript_source"] == "model" and row["language"]
    (failure,) = query(pg_dsn, "SELECT row_index, id, error FROM dataset_failures")
    assert (failure["row_index"], failure["id"]) == (2, "utt-02") and "cannot decode" in failure["error"]
    shards = query(pg_dsn, "SELECT first_row, end_row, rows, failed FROM dataset_shards ORDER BY shard")
    assert [(s["first_row"], s["end_row"], s["rows"], s["failed"]) for s in shards] == [
        (0, 3, 2, 1), (3, 6, 3, 0), (6, 7, 1, 0)
    ]  # fmt: skip
    assert not list((tmp_path / "scratch").rglob("*.*")), "scratch not cleaned"

    # Done is done: a rerun with --resume does nothing; without it, it refuses to start over.
    assert main(_args(tmp_path / "src", pg_dsn, rsync_daemon.url, tmp_path, tiny_model,
                      "--id-column", "key", "--limit", "7", "--upload-batch-size", "3",
                      "--output-name", "out", "--resume")) == 0  # fmt: skip
    assert query(pg_dsn, "SELECT count(*) AS n FROM dataset_shards")[0]["n"] == 3
    rc = main(_args(tmp_path / "src", pg_dsn, rsync_daemon.url, tmp_path, tiny_model, "--output-name", "out"))
    assert rc == 2 and "pass --resume to continue it" in capsys.readouterr().err


def _run_until(args: list[str], dsn: str, shards: int, sig: signal.Signals) -> tuple[int, int]:
    """Start process-dataset, send `sig` once `shards` shards are checkpointed; (exit code, shards)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "streaming_pipeline", *args], env=env)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        rows = query(dsn, "SELECT shards_done FROM dataset_runs") if _has_runs(dsn) else []
        done = rows[0]["shards_done"] if rows else 0
        if done >= shards:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(sig)
    return proc.wait(timeout=120), done


@pytest.mark.slow
def test_killed_then_stopped_run_resumes_with_every_row_exactly_once(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips
) -> None:
    ids = _source(tmp_path / "src", clips, 12)
    remote = tmp_path / "remote"
    args = _args(tmp_path / "src", pg_dsn, str(remote), tmp_path, tiny_model,
                 "--id-column", "key", "--upload-batch-size", "2", "--output-name", "out")  # fmt: skip
    slow = [*args, *SLOW_DECODING]  # busy long enough to be stopped mid-run

    rc, done = _run_until(slow, pg_dsn, 1, signal.SIGKILL)
    assert rc == -signal.SIGKILL and 1 <= done < 6

    # Resumed, then stopped cleanly (Slurm's time-limit signal): the open shard is dropped.
    rc, done = _run_until([*slow, "--resume"], pg_dsn, done + 2, signal.SIGUSR1)
    assert rc == 75
    (run,) = query(pg_dsn, "SELECT state, error, shards_done FROM dataset_runs")
    assert (run["state"], run["error"]) == ("interrupted", "stopped by SIGUSR1")
    assert run["shards_done"] < 6

    assert main([*args, "--resume"]) == 0
    rows = _output(remote, "out")
    assert [r["id"] for r in rows] == ids  # every row once, in order: no duplicate, no gap
    (run,) = query(pg_dsn, "SELECT state, rows_done, rows_written, shards_done, last_id FROM dataset_runs")
    assert (run["state"], run["rows_done"], run["rows_written"], run["shards_done"]) == ("done", 12, 12, 6)
    assert run["last_id"] == "utt-11"
    shards = query(pg_dsn, "SELECT first_row, end_row FROM dataset_shards ORDER BY shard")
    assert [(s["first_row"], s["end_row"]) for s in shards] == [(i, i + 2) for i in range(0, 12, 2)]


def _has_runs(dsn: str) -> bool:
    return query(dsn, "SELECT to_regclass('dataset_runs') IS NOT NULL AS present")[0]["present"]


@pytest.mark.slow
def test_exported_shards_are_a_process_dataset_source(tmp_path: Path, pg_dsn: str, tiny_model: Path) -> None:
    remote = tmp_path / "remote"
    common = ["--dsn", pg_dsn, "--remote", str(remote), "--scratch-dir", str(tmp_path / "scratch"),
              "--model", str(tiny_model), "--device", "cpu", "--beam-size", "1",
              "--num-workers", "2"]  # fmt: skip
    (archive,) = make_day(tmp_path, ["12_30"], members=4)
    assert main(["process-tar", DAY, str(archive), "12_30", *common]) == 0
    assert main(["export", DAY, "--out", str(tmp_path / "export"), *common]) == 0
    exported = _output_folder(tmp_path / "export")

    rc = main(["process-dataset", str(tmp_path / "export"), "--id-column", "id",
               "--text-column", "transcript", "--output-name", "again", *common])  # fmt: skip
    assert rc == 0
    again = _output(remote, "again")
    assert [r["id"] for r in again] == [r["id"] for r in exported]
    for before, after in zip(exported, again, strict=True):
        if before["transcript"]:
            assert (after["transcript"], after["transcript_source"]) == (before["transcript"], "source")
        assert after["duration_s"] == pytest.approx(before["duration_s"])


def _output_folder(folder: Path) -> list[dict]:
    ds = load_dataset(str(folder), split="train", streaming=True)
    return list(ds.cast_column("audio", Audio(decode=False)))


def test_unknown_source_and_missing_columns_are_clear_errors(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips, capsys
) -> None:
    _source(tmp_path / "src", clips, 2)
    remote = str(tmp_path / "remote")
    assert main(_args(tmp_path / "nowhere", pg_dsn, remote, tmp_path, tiny_model)) == 1
    assert "nowhere: no such file or directory" in capsys.readouterr().err

    rc = main(_args(tmp_path / "src", pg_dsn, remote, tmp_path, tiny_model, "--audio-column", "speech"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "has no column 'speech' (--audio-column)" in err and "'audio'" in err

    assert main(_args(tmp_path / "src", pg_dsn, remote, tmp_path, tiny_model, "--split", "test")) == 1
    assert "cannot open dataset" in capsys.readouterr().err
    assert not (tmp_path / "remote" / "datasets").exists()


@pytest.mark.slow
def test_an_audiofolder_with_reference_texts_streams_in(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, clips
) -> None:
    folder = tmp_path / "audiofolder"
    folder.mkdir()
    lines = ["file_name,text"]
    for i, (name, data) in enumerate(clips[:3]):
        (folder / f"clip{i}{Path(name).suffix}").write_bytes(data)
        lines.append(f"clip{i}{Path(name).suffix},said {i}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    remote = tmp_path / "remote"
    rc = main(_args(folder, pg_dsn, str(remote), tmp_path, tiny_model, "--text-column", "text",
                    "--output-name", "af"))  # fmt: skip
    assert rc == 0
    rows = _output(remote, "af")
    assert [(r["id"], r["transcript"], r["transcript_source"]) for r in rows] == [
        ("0", "said 0", "source"), ("1", "said 1", "source"), ("2", "said 2", "source")
    ]  # fmt: skip
    assert all(sf.info(io.BytesIO(r["audio"]["bytes"])).samplerate == 16000 for r in rows)

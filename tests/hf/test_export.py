"""export: a processed day out as Parquet shards, read back by Hugging Face `datasets` (streaming)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf
from datasets import Audio, load_dataset

from streaming_pipeline.cli import main
from streaming_pipeline.hf.shards import parse_size

from ..conftest import DAY, RsyncDaemon, make_day, query


def _common(dsn: str, remote: str, tmp_path: Path, model: Path) -> list[str]:
    return [
        "--dsn", dsn, "--remote", remote, "--scratch-dir", str(tmp_path / "scratch"),
        "--model", str(model), "--device", "cpu", "--beam-size", "1", "--num-workers", "2",
        "--stream-batch-size", "3", "--upload-retries", "2", "--upload-timeout", "20",
    ]  # fmt: skip


def _process(
    tmp_path: Path, dsn: str, remote: str, model: Path, slots: list[str], members: int, *extra: str
) -> None:
    for archive in make_day(tmp_path, slots, members):
        slot = archive.name.removesuffix(".tar.xz")
        common = _common(dsn, remote, tmp_path, model)
        assert main(["process-tar", DAY, str(archive), slot, *common, *extra]) == 0


def _load(folder: Path) -> list[dict]:
    ds = load_dataset(str(folder), split="train", streaming=True)
    assert ds.features["audio"] == Audio(sampling_rate=16000)
    # datasets >= 4 decodes audio with torchcodec (torch); the raw FLAC is decoded here instead.
    return list(ds.cast_column("audio", Audio(decode=False)))


def _assert_matches_database(rows: list[dict], dsn: str) -> None:
    done = query(
        dsn,
        "SELECT archive, member, transcript, language, duration_s, model, transcript_key FROM audio_files"
        " WHERE status = 'done'",
    )
    assert len(rows) == len(done) > 0
    by_id = {f"{d['archive']}/{d['member']}": d for d in done}
    assert sorted(r["id"] for r in rows) == sorted(by_id)  # each done member once
    for row in rows:
        expected = by_id[row["id"]]
        assert row["transcript"] == expected["transcript"]
        assert row["language"] == expected["language"]
        made = json.loads(row["provenance"])  # what made the transcript, as the row in PostgreSQL says
        assert (row["model"], made["model"], made["key"]) == (expected["model"],) * 2 + (
            expected["transcript_key"],
        )
        audio, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert rate == 16000 and audio.ndim == 1
        assert len(audio) / 16000 == pytest.approx(expected["duration_s"], abs=1e-3)
        assert row["audio"]["path"].endswith(".flac")
        assert str(row["day"]) == DAY and row["member"] == expected["member"]
        keys = {"start", "end", "text", "avg_logprob", "no_speech_prob", "language", "speaker", "words"}
        assert all(set(s) == keys for s in row["segments"])
        for segment in row["segments"]:
            for word in segment["words"]:
                assert set(word) == {"start", "end", "word", "probability", "speaker"}
                assert segment["start"] <= word["start"] <= word["end"] <= segment["end"]


@pytest.mark.slow
def test_export_to_the_remote_through_the_rsync_daemon_loads_with_datasets(
    tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path, capsys
) -> None:
    _process(tmp_path, pg_dsn, rsync_daemon.url, tiny_model, ["12_30", "13_00"], 4, "--timestamps", "word")
    common = _common(pg_dsn, rsync_daemon.url, tmp_path, tiny_model)
    assert main(["export", DAY, "--shard-rows", "3", *common]) == 0
    assert "exported 8 members" in capsys.readouterr().out

    folder = rsync_daemon.data / DAY / "parquet"
    shards = sorted(p.name for p in (folder / "data").iterdir())
    assert shards == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    assert "data/train-00002.parquet" in (folder / "README.md").read_text()
    rows = _load(folder)
    _assert_matches_database(rows, pg_dsn)
    # Word times travel as nested columns: the words of each sidecar, as they are (for any draw of
    # the random model's weights, some of which time no word at all).
    sidecars = [json.loads(p.read_text()) for p in (rsync_daemon.data / DAY).rglob("*.json")]
    timed = {f"{j['archive']}/{j['member']}": [s.get("words", []) for s in j["segments"]] for j in sidecars}
    assert len(timed) == len(rows)
    for row in rows:
        exported = [[(w["start"], w["end"], w["word"]) for w in s["words"]] for s in row["segments"]]
        assert exported == [[(w["start"], w["end"], w["word"]) for w in ws] for ws in timed[row["id"]]]
    assert not list((tmp_path / "scratch").rglob("*.parquet")), "export left shards in scratch"


@pytest.mark.slow
def test_export_to_a_folder_bounds_shards_and_row_groups_and_replaces_a_larger_export(
    tmp_path: Path, pg_dsn: str, tiny_model: Path
) -> None:
    remote = tmp_path / "remote"
    _process(tmp_path, pg_dsn, str(remote), tiny_model, ["12_30"], members=6)
    common = _common(pg_dsn, str(remote), tmp_path, tiny_model)
    out = tmp_path / "export"
    assert main(["export", DAY, "--out", str(out), "--shard-rows", "1", *common]) == 0
    assert len(list((out / "data").glob("*.parquet"))) == 6

    # A second export into the same folder with bigger shards: the card names only its own files,
    # and the first export's leftovers are gone, so no row is read twice.
    assert main(["export", DAY, "--out", str(out), "--shard-size", "1B", *common]) == 0
    files = sorted((out / "data").glob("*.parquet"))
    assert len(files) == 6  # one row per shard: any row exceeds a 1-byte cap
    assert main(["export", DAY, "--out", str(out), *common]) == 0
    files = sorted((out / "data").glob("*.parquet"))
    assert [f.name for f in files] == ["train-00000.parquet"]
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.num_rows == 6
    audio_col = [meta.row_group(0).column(i) for i in range(meta.num_columns)]
    (audio_bytes,) = [c for c in audio_col if c.path_in_schema == "audio.bytes"]
    assert audio_bytes.compression == "UNCOMPRESSED" and not audio_bytes.is_stats_set
    _assert_matches_database(_load(out), pg_dsn)


def test_export_of_a_day_without_done_members_is_a_clear_error(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys
) -> None:
    common = _common(pg_dsn, str(tmp_path / "remote"), tmp_path, tiny_model)
    assert main(["export", DAY, "--out", str(tmp_path / "x"), *common]) == 1
    assert f"no done members for {DAY}" in capsys.readouterr().err


def test_sizes_parse_with_units() -> None:
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("64MiB") == 64 * 2**20
    assert parse_size("1.5k") == 1500
    assert parse_size("123") == 123
    with pytest.raises(Exception, match="bad size"):
        parse_size("lots")

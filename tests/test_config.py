from __future__ import annotations

from pathlib import Path

import pytest

from streaming_pipeline.config import build_config, parse_day
from streaming_pipeline.errors import ConfigError


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    env = {
        "PIPELINE_MODEL": "/models/env",
        "PIPELINE_BEAM_SIZE": "3",
        "DB_CREDS": "host=fallback",
        "TMPDIR": "/t",
    }
    config = build_config({"model": "/models/flag"}, env)
    assert config.model == "/models/flag"
    assert config.beam_size == 3
    assert config.dsn == "host=fallback"
    assert config.scratch_dir == Path("/t/streaming-pipeline")
    assert build_config({}, {**env, "PIPELINE_DSN": "host=primary"}).dsn == "host=primary"
    assert build_config({}, {}).stream_batch_size == 200
    assert build_config({}, {"PIPELINE_TEMPERATURES": "0"}).temperatures == "0"


def test_slurm_job_id_comes_from_the_environment() -> None:
    assert build_config({}, {}).slurm_job_id is None
    assert build_config({}, {"SLURM_JOB_ID": "41"}).slurm_job_id == "41"
    env = {"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "42", "SLURM_ARRAY_TASK_ID": "7"}
    assert build_config({}, env).slurm_job_id == "42_7"


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        ({"num_workers": 0}, {}, "num-workers"),
        ({}, {"PIPELINE_BEAM_SIZE": "five"}, "beam_size"),
        ({"device": "tpu"}, {}, "device"),
        ({}, {"PIPELINE_TEMPERATURES": "0,hot"}, "temperatures"),
        ({"temperatures": "0,1.5"}, {}, "temperatures"),
    ],
)
def test_bad_values_are_config_errors(cli: dict, env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(cli, env)


def test_bad_day() -> None:
    assert parse_day("2025-01-25").isoformat() == "2025-01-25"
    with pytest.raises(ConfigError, match="bad date"):
        parse_day("25/01/2025")


def test_days_and_ranges() -> None:
    from streaming_pipeline.config import days_label, parse_days

    days = parse_days(["2025-01-30..2025-02-02", "2025-01-31,2025-03-01"])
    assert [d.isoformat() for d in days] == [
        "2025-01-30",
        "2025-01-31",
        "2025-02-01",
        "2025-02-02",
        "2025-03-01",
    ]
    assert days_label(days) == "2025-01-30..2025-03-01_5days"
    assert days_label(parse_days("2024-02-28..2024-03-01")) == "2024-02-28..2024-03-01"  # leap day inside
    assert len(parse_days("2025-01-01..2025-12-31")) == 365
    for bad, message in [("2025-02-01..2025-01-01", "ends before it starts"), ("2025-01-01..", "bad date"),
                         ("2000-01-01..2020-01-01", "more than"), (",", "no day given")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            parse_days(bad)


def test_timestamps_and_subtitles_settings_round_trip_to_workers() -> None:
    from streaming_pipeline.config import config_env

    default = build_config({}, {})
    assert (default.timestamps, default.subtitles) == ("segment", "srt")
    config = build_config({}, {"PIPELINE_TIMESTAMPS": "word", "PIPELINE_SUBTITLES": "VTT, srt"})
    assert (config.timestamps, config.subtitles) == ("word", "srt,vtt")
    none = build_config({}, {"PIPELINE_SUBTITLES": ""})
    assert none.subtitles == "none", "set but empty: no subtitles"
    assert build_config({"subtitles": "none"}, {}).subtitles == "none"
    for chosen in (config, none):
        rebuilt = build_config({}, config_env(chosen))  # what a worker job rebuilds
        assert (rebuilt.timestamps, rebuilt.subtitles) == (chosen.timestamps, chosen.subtitles)
    with pytest.raises(ConfigError, match="subtitles: ass is not"):
        build_config({"subtitles": "srt,ass"}, {})
    with pytest.raises(ConfigError, match="timestamps must be"):
        build_config({}, {"PIPELINE_TIMESTAMPS": "words"})


def test_a_worker_job_uses_its_own_tmpdir_unless_a_scratch_dir_was_set() -> None:
    """On a cluster TMPDIR is per job and the controller's is gone before its workers start: the
    controller passes a scratch dir on only when the user set one."""
    from streaming_pipeline.config import config_env

    controller = build_config({}, {"TMPDIR": "/tmp/job_100"})
    assert controller.scratch_dir == Path("/tmp/job_100/streaming-pipeline")
    assert "PIPELINE_SCRATCH" not in config_env(controller)
    worker = build_config({}, {**config_env(controller), "TMPDIR": "/tmp/job_101"})
    assert worker.scratch_dir == Path("/tmp/job_101/streaming-pipeline")
    chosen = build_config({}, {"PIPELINE_SCRATCH": "/scratch/me", "TMPDIR": "/tmp/job_100"})
    assert config_env(chosen)["PIPELINE_SCRATCH"] == "/scratch/me"
    assert build_config({}, {**config_env(chosen), "TMPDIR": "/tmp/job_101"}).scratch_dir == Path(
        "/scratch/me"
    )


def test_restarts_come_from_slurm_and_their_cap_from_the_settings() -> None:
    assert (build_config({}, {}).slurm_restart_count, build_config({}, {}).max_restarts) == (0, 3)
    config = build_config({}, {"SLURM_RESTART_COUNT": "2", "PIPELINE_MAX_RESTARTS": "5"})
    assert (config.slurm_restart_count, config.max_restarts) == (2, 5)
    with pytest.raises(ConfigError, match="max-restarts"):
        build_config({"max_restarts": -1}, {})

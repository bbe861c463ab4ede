from __future__ import annotations

from pathlib import Path

import pytest

from streaming_pipeline.config import Timestamps, build_config
from streaming_pipeline.day_specs import parse_day
from streaming_pipeline.errors import ConfigError

from .conftest import REPO


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
    from streaming_pipeline.day_specs import days_label, parse_days

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
    assert (default.timestamps, default.subtitles) == (Timestamps.SEGMENT, ("srt",))
    assert default.timestamps is Timestamps.SEGMENT, "an enum member, never a string to compare"
    config = build_config({}, {"PIPELINE_TIMESTAMPS": "word", "PIPELINE_SUBTITLES": "VTT, srt"})
    assert (config.timestamps, config.subtitles) == (Timestamps.WORD, ("srt", "vtt"))
    assert config_env(config)["PIPELINE_SUBTITLES"] == "srt,vtt"
    none = build_config({}, {"PIPELINE_SUBTITLES": ""})
    assert none.subtitles == (), "set but empty: no subtitles"
    assert build_config({"subtitles": "none"}, {}).subtitles == ()
    assert config_env(none)["PIPELINE_SUBTITLES"] == "none"
    for chosen in (config, none):
        rebuilt = build_config({}, config_env(chosen))  # what a worker job rebuilds
        assert (rebuilt.timestamps, rebuilt.subtitles) == (chosen.timestamps, chosen.subtitles)
    with pytest.raises(ConfigError, match="subtitles: ass is not"):
        build_config({"subtitles": "srt,ass"}, {})
    with pytest.raises(ConfigError, match="--timestamps: 'words' is not one of none, segment, word"):
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


def test_the_restart_cap_comes_from_the_settings() -> None:
    assert build_config({}, {}).max_restarts == 3
    assert build_config({}, {"PIPELINE_MAX_RESTARTS": "5"}).max_restarts == 5
    with pytest.raises(ConfigError, match="max-restarts"):
        build_config({"max_restarts": -1}, {})


def test_every_setting_is_declared_once_with_a_flag_or_a_reason_and_round_trips_to_workers() -> None:
    """The declarations are the settings: the parser's flags, the variables and the checks are
    generated from them, and every PIPELINE_* variable the README documents is one of them."""
    import re
    from dataclasses import MISSING

    from streaming_pipeline.cli.parser import build_parser
    from streaming_pipeline.config import config_env, setting_type, settings

    declared = list(settings())
    envs = {s.env for _, s in declared}
    assert len(envs) == len(declared), "one variable per setting"
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    parser_help = "".join(commands[c].format_help() for c in ("process-day", "retranscribe", "serve"))
    examples = {int: "7", float: "7.5", bool: "0", Path: "/x/y", str: "x"}
    for f, s in declared:
        assert s.env.startswith("PIPELINE_") and s.help, f.name
        assert s.flag or s.no_flag, f"{f.name}: a flag, or why not"
        if s.flag:
            assert s.flag in parser_help and s.env in parser_help, f.name
        typ = setting_type(f)
        overrides = {
            "temperatures": "0.2",
            "subtitles": "vtt",
            "vad": "0",
            "offline": "1",
            "speakers_only": "1",
        }
        value = overrides.get(f.name) or (s.choices[-1] if s.choices else examples[typ])
        config = build_config({}, {s.env: value})
        rebuilt = build_config({}, config_env(config))  # what a worker job rebuilds
        assert (
            getattr(rebuilt, f.name)
            == getattr(config, f.name)
            != (f.default if f.default is not MISSING else None)
        ), f.name
    # Unset settings are not passed on: a worker job resolves its own (its TMPDIR, say).
    assert config_env(build_config({}, {"TMPDIR": "/tmp/job_1"})) == {}
    documented = set(re.findall(r"PIPELINE_[A-Z_]+[A-Z]", (REPO / "README.md").read_text()))
    not_settings = {"PIPELINE_CONTAINER_BINDS"}  # read by hpc/process_single_tar_streaming.sh itself
    documented -= not_settings | {v for v in documented if v.startswith("PIPELINE_TEST_")}
    assert documented <= envs, documented - envs


def test_each_setting_is_in_one_group_and_components_take_their_own() -> None:
    """The settings split by what takes them: the decoder its decode group, the rsync client and
    the uploads the destination group; none of them is handed every setting."""
    import inspect
    from dataclasses import fields

    from streaming_pipeline import config as settings_module
    from streaming_pipeline.destination import Rsync
    from streaming_pipeline.stages.asr.options import DecodeOptions, LoadOptions
    from streaming_pipeline.stages.upload import Uploads

    groups = [
        settings_module.StoreSettings, settings_module.DestinationSettings, settings_module.DecodeSettings,
        settings_module.RunSettings, settings_module.RetranscribeSettings, settings_module.DaySettings,
        settings_module.ServeSettings,
    ]  # fmt: skip
    names = [f.name for group in groups for f in fields(group)]
    assert len(names) == len(set(names)), "a setting in two groups"
    assert set(names) == {f.name for f, _ in settings_module.settings()}, "a setting in no group"
    for of, group in (
        (DecodeOptions.of, settings_module.DecodeSettings),
        (LoadOptions.of, settings_module.DecodeSettings),
        (Rsync.of, settings_module.DestinationSettings),
        (Uploads.of, settings_module.DestinationSettings),
    ):
        (first, *_) = inspect.signature(of).parameters.values()  # annotations as written (a type-only import)
        assert first.annotation in (group, group.__name__), (of, first.annotation)
    config = build_config({"beam_size": "2", "remote": "/data/out"}, {})
    assert config.decode == settings_module.DecodeSettings.of(config) and config.decode.beam_size == 2
    assert not hasattr(config.decode, "remote") and config.destination.remote == "/data/out"
    assert len(fields(config.decode)) < len(names) / 2

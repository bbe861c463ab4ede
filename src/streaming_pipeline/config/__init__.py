"""All settings in one frozen object, read once from CLI flags and PIPELINE_* variables.

Each setting is declared once, on its field of a settings group (config/groups.py): its PIPELINE_*
variable, its flag (or why it has none), its help and its check (`setting(...)`, config/declare.py).
`PipelineConfig` is the groups together; a component takes its own group (`config.decode`,
`config.destination`, ...), not all of them. The parser's options (`cli/parser.py`), the
environment a worker job gets (`config_env`) and validation are generated from those
declarations. Nothing below the CLI reads the environment: the config is passed down, so a
worker's behaviour is fully described by the object it was given (and by what it logs of it).
"""

from __future__ import annotations

import enum
import os
import tempfile
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import Field, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..redaction import redact_dsn
from .declare import ENV_PREFIX, SUBTITLE_FORMATS, Setting, Timestamps, parse_temperatures, subtitle_formats
from .groups import (
    DaySettings,
    DecodeSettings,
    DestinationSettings,
    RetranscribeSettings,
    RunSettings,
    ServeSettings,
    StoreSettings,
    speaker_model_path,
)

__all__ = [
    "ENV_PREFIX", "SUBTITLE_FORMATS", "DaySettings", "DecodeSettings", "DestinationSettings",
    "PipelineConfig", "RetranscribeSettings", "RunSettings", "ServeSettings", "Setting", "StoreSettings",
    "Timestamps", "build_config", "config_env", "environ", "parse_temperatures", "setting_type",
    "settings", "subtitle_formats",
]  # fmt: skip


# The bases in reverse: a dataclass's fields come from its last base first, so the settings are
# listed (help, docs) store, destination, decode, run, retranscribe, day, serve.
@dataclass(frozen=True)
class PipelineConfig(
    ServeSettings,
    DaySettings,
    RetranscribeSettings,
    RunSettings,
    DecodeSettings,
    DestinationSettings,
    StoreSettings,
):
    """Every setting: what the CLI builds and a worker job rebuilds from its environment."""

    # Not a setting: which settings were given (run/job_environment.py holds what Slurm says).
    explicit: frozenset[str] = frozenset()  # settings given by a flag, a variable or a command

    def redacted_dsn(self) -> str:
        return redact_dsn(self.dsn)

    def with_settings(self, **values: Any) -> PipelineConfig:
        """A copy with these settings set, as if given explicitly (a worker job gets them)."""
        return replace(self, **values, explicit=self.explicit | set(values))

    @property
    def destination(self) -> DestinationSettings:
        """What the rsync client and the uploads take (Rsync.of, Uploads.of)."""
        return DestinationSettings.of(self)

    @property
    def decode(self) -> DecodeSettings:
        """What the decoder takes (DecodeOptions.of, LoadOptions.of)."""
        return DecodeSettings.of(self)


def settings() -> Iterator[tuple[Field[Any], Setting]]:
    """Every declared setting, in declaration order."""
    for f in fields(PipelineConfig):
        declared = f.metadata.get("setting")
        if declared is not None:
            yield f, declared


def setting_type(f: Field[Any]) -> type:
    """The setting's value type (int for `int | None`)."""
    hint = typing.get_type_hints(PipelineConfig)[f.name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _coerce(f: Field[Any], declared: Setting, raw: Any, source: str) -> Any:
    if raw is None or not isinstance(raw, str):
        return raw
    if declared.parse is not None:
        try:
            return declared.parse(raw)
        except ConfigError as exc:
            raise ConfigError(f"{declared.flag or declared.env}: {exc}") from None
    typ: Any = setting_type(f)
    try:
        if issubclass(typ, enum.Enum):  # a value that is none of them: the check says which are
            members: dict[str, Any] = {m.value: m for m in typ}
            return members.get(raw, raw)
        if typ is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if typ is Path:
            return Path(raw).expanduser()
        return typ(raw)
    except ValueError:
        raise ConfigError(f"{f.name} ({source}): {raw!r} is not a valid {typ.__name__}") from None


def build_config(
    cli: Mapping[str, Any], env: Mapping[str, str], defaults: Mapping[str, Any] | None = None
) -> PipelineConfig:
    """CLI flags win over PIPELINE_* variables, which win over a command's own `defaults` (the
    benchmark's small batches), which win over the declared defaults.

    The DSN also falls back to DB_CREDS, the variable users' monitoring commands already use.
    """
    values: dict[str, Any] = {}
    for f, declared in settings():
        raw, source = cli.get(f.name), f"--{f.name}"
        if raw is None:
            raw, source = env.get(declared.env) or None, declared.env
            if f.name == "subtitles" and env.get(declared.env) == "":
                raw = "none"  # set but empty: no subtitles
        if raw is None and f.name == "dsn":
            raw, source = env.get("DB_CREDS") or None, "DB_CREDS"
        if raw is None and defaults:
            raw, source = defaults.get(f.name), "default"
        if raw is not None:
            values[f.name] = _coerce(f, declared, raw, source)
    explicit = frozenset(values)
    if "scratch_dir" not in values:
        values["scratch_dir"] = Path(env.get("TMPDIR") or tempfile.gettempdir()) / "streaming-pipeline"
    if "speaker_model" not in values:
        values["speaker_model"] = speaker_model_path(env)
    config = PipelineConfig(**values, explicit=explicit)
    _validate(config)
    return config


def config_env(config: PipelineConfig) -> dict[str, str]:
    """The PIPELINE_* variables that rebuild `config` in a child process (a worker job): the
    settings given explicitly, never the submitting host's defaults (its TMPDIR, say).

    Workers get their settings through the environment, never argv, so that the DSN's password
    does not show in `ps`, `squeue` or `scontrol show job`.
    """
    env: dict[str, str] = {}
    for f, declared in settings():
        value = getattr(config, f.name)
        if f.name not in config.explicit or value is None or value == "":
            continue
        env[declared.env] = declared.show(value.resolve() if isinstance(value, Path) else value)
    return env


def _validate(config: PipelineConfig) -> None:
    for f, declared in settings():
        problem = declared.check(getattr(config, f.name)) if declared.check is not None else None
        if problem is not None:
            raise ConfigError(f"{declared.flag or declared.env}: {problem}")


def environ() -> Mapping[str, str]:
    """The only place the process environment is read (by the CLI)."""
    return os.environ

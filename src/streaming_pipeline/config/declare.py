"""How a setting is declared (`setting(...)`: its variable, flag, help, check, parse and show),
the checks, the parsers of settings that are more than a type, and `Timestamps`."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any

from ..errors import ConfigError
from ..member_files import SUBTITLE_KINDS

ENV_PREFIX = "PIPELINE_"

Check = Callable[[Any], str | None]  # why a value is wrong, or None


@dataclass(frozen=True)
class Setting:
    """How one field of a settings group (and so of PipelineConfig) is set."""

    env: str  # its PIPELINE_* variable
    help: str
    flag: str | None = None  # its command-line flag; None: see `no_flag`
    no_flag: str | None = None  # why it has no flag
    check: Check | None = None
    choices: tuple[str, ...] | None = None
    group: str = "pipeline"  # the flag's option group: pipeline (every run), day (process-day), serve
    parse: Callable[[str], Any] | None = None  # text to value, where the type alone cannot
    show: Callable[[Any], str] = str  # value to text: the variable a worker job gets


def setting(
    default: Any = MISSING,
    *,
    env: str,
    help: str,
    flag: str | None = None,
    no_flag: str | None = None,
    check: Check | None = None,
    choices: tuple[str, ...] | None = None,
    group: str = "pipeline",
    factory: Callable[[], Any] | None = None,
    parse: Callable[[str], Any] | None = None,
    show: Callable[[Any], str] = str,
) -> Any:
    """A field of a settings group declared with everything that sets it."""
    if choices is not None and check is None:
        check = one_of(*choices)
    meta = {"setting": Setting(env, help, flag, no_flag, check, choices, group, parse, show)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low:g}"


def positive(v: float) -> str | None:
    return None if v > 0 else "must be more than 0"


def one_of(*allowed: str) -> Check:
    return lambda v: None if v in allowed else f"{v!r} is not one of {', '.join(allowed)}"


def message_of(parse: Callable[[Any], Any]) -> Check:
    def check(value: Any) -> str | None:
        try:
            parse(value)
        except ConfigError as exc:
            return str(exc)
        return None

    return check


class Timestamps(enum.StrEnum):
    """Time in the transcripts (--timestamps)."""

    NONE = "none"  # one segment per speech window
    SEGMENT = "segment"  # sentence-sized segments, timed by their words (which are then dropped)
    WORD = "word"  # those segments, and their words


def parse_temperatures(text: str) -> tuple[float, ...]:
    """`0,0.2,...`: faster-whisper's fallback temperatures, each in [0, 1], at least one."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values or any(not 0.0 <= t <= 1.0 for t in values):
        raise ConfigError(f"{text!r} is not a comma-separated list of numbers in [0, 1]")
    return values


SUBTITLE_FORMATS = tuple(kind.value for kind in SUBTITLE_KINDS)


def subtitle_formats(text: str) -> tuple[str, ...]:
    """`srt`, `vtt`, `srt,vtt`; empty or `none`: no subtitles. Each format once, in this order."""
    wanted = {part.strip().lower() for part in text.split(",")} - {"", "none"}
    unknown = wanted - set(SUBTITLE_FORMATS)
    if unknown:
        raise ConfigError(f"{', '.join(sorted(unknown))} is not srt, vtt or none")
    return tuple(f for f in SUBTITLE_FORMATS if f in wanted)

"""Days as the command line names them: one day, ranges, lists; and a label for a set of days."""

from __future__ import annotations

import datetime as dt

from .errors import ConfigError


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"bad date {text!r}: expected YYYY-MM-DD") from None


MAX_DAYS = 3660  # ten years: a typo'd range fails instead of submitting a century


def parse_days(specs: str | list[str] | tuple[str, ...]) -> list[dt.date]:
    """Days and ranges, as arguments or comma-separated: `2025-01-01..2025-01-31 2025-02-03`.
    Sorted, each once."""
    items = [specs] if isinstance(specs, str) else list(specs)
    days: set[dt.date] = set()
    for item in (part.strip() for spec in items for part in spec.split(",")):
        if not item:
            continue
        first, sep, last = item.partition("..")
        start, end = parse_day(first), parse_day(last) if sep else parse_day(first)
        if end < start:
            raise ConfigError(f"{item}: the range ends before it starts")
        if (end - start).days >= MAX_DAYS:
            raise ConfigError(f"{item}: more than {MAX_DAYS} days")
        days.update(start + dt.timedelta(days=i) for i in range((end - start).days + 1))
    if not days:
        raise ConfigError("no day given: YYYY-MM-DD, YYYY-MM-DD..YYYY-MM-DD, or several")
    if len(days) > MAX_DAYS:
        raise ConfigError(f"more than {MAX_DAYS} days")
    return sorted(days)


def days_label(days: list[dt.date]) -> str:
    """`2025-01-25`, or `2025-01-01..2025-01-31` for a contiguous range, else first..last+N."""
    if len(days) == 1:
        return days[0].isoformat()
    label = f"{days[0].isoformat()}..{days[-1].isoformat()}"
    contiguous = (days[-1] - days[0]).days + 1 == len(days)
    return label if contiguous else f"{label}_{len(days)}days"

"""A question's time window as people say it: "last 5 minutes", 300, "2h", or clock times.

Three forms, exactly one per question: relative (``last``: the newest N seconds of the memory, resolved
by the worker when it answers), wall-clock (``since``/``until``: converted here to stream seconds with
the stream's media epoch) and stream seconds (``window_start``/``window_end``).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

MAX_LAST_S = 366 * 86400.0
"""The longest relative window: a year (any memory is far shorter; this only bounds the number)."""

UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}
_PREFIX = re.compile(r"^(?:in\s+)?(?:the\s+)?(?:last|past)\s+")
_PART = re.compile(r"(\d+(?:\.\d+)?|an?\b)?\s*([a-z]+)")
_ISO = re.compile(r"^p(?:(\d+(?:\.\d+)?)d)?(?:t(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?)?$")
EXAMPLES = '300, "300", "5 minutes", "last 5 minutes", "the last hour", "2h", "90s", "1h30m" or "PT5M"'


def parse_last(value: object) -> float:
    """Seconds of a relative window; ValueError (naming the accepted forms) for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be seconds or a duration such as {EXAMPLES}")
    seconds = float(value) if not isinstance(value, str) else _parse_text(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a positive, finite duration, such as {EXAMPLES}")
    if seconds > MAX_LAST_S:
        raise ValueError(f"is {seconds:g} s; at most {MAX_LAST_S:g} s (a year) is allowed")
    return seconds


def _parse_text(text: str) -> float:
    cleaned = _PREFIX.sub("", text.strip().lower())
    try:
        return float(cleaned)
    except ValueError:
        pass
    iso = _ISO.match(cleaned)
    if iso and any(iso.groups()):
        days, hours, minutes, secs = (float(g or 0) for g in iso.groups())
        return days * 86400 + hours * 3600 + minutes * 60 + secs
    return _sum_parts(cleaned)


def _sum_parts(cleaned: str) -> float:
    """"1h30m", "1 hour 30 minutes", "an hour", "hour" (one), "2 days, 3 hours"."""
    rest, total, parts = re.sub(r"[,]|\band\b", " ", cleaned).strip(), 0.0, 0
    while rest:
        match = _PART.match(rest)
        if match is None or match.group(2) not in UNITS:
            raise ValueError(f"is not a duration; use seconds or, e.g., {EXAMPLES}")
        number = match.group(1)
        amount = 1.0 if number in (None, "a", "an") else float(number)
        total, parts, rest = total + amount * UNITS[match.group(2)], parts + 1, rest[match.end():].strip()
    if parts == 0:
        raise ValueError(f"is not a duration; use seconds or, e.g., {EXAMPLES}")
    return total


class WindowOutsideMedia(ValueError):
    """A clock-time window that ends before the stream's media began."""


def to_stream_seconds(
    since: datetime | None, until: datetime | None, epoch: datetime
) -> tuple[float | None, float | None]:
    """Clock times as stream seconds (``epoch`` is stream second 0); a start before the media clamps to 0."""
    start = None if since is None else max(0.0, (since - epoch).total_seconds())
    end = None if until is None else (until - epoch).total_seconds()
    if end is not None and end < 0:
        raise WindowOutsideMedia(
            f"is {as_utc(until).isoformat()}, before the stream's media began ({as_utc(epoch).isoformat()})"
        )
    return start, end


def as_utc(moment: datetime | None) -> datetime | None:
    """Aware times compare and store in UTC on every database (SQLite keeps no offset)."""
    return None if moment is None else moment.astimezone(UTC)


_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")


def iso_time_only(value: object) -> object:
    """Refuse numbers where an ISO 8601 time is asked for (pydantic would read them as Unix times)."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("is a number; give an ISO 8601 time with a zone, such as 2026-03-01T10:00:00Z")
    return value

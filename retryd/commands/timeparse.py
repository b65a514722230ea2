"""Times and durations as operators type them: `90s`, `15m`, `2h`, `1d`, or ISO 8601."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0}


def parse_duration_s(text: str) -> float:
    """Seconds in `text` (`90`, `90s`, `15m`, `2h`, `1d`); ValueError naming the problem."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 15m, 2h, 1d)")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be more than zero")
    return seconds


def parse_time_s(text: str, now_s: float) -> float:
    """Unix seconds of `text`: ISO 8601 (UTC when no offset is given), or a duration ago."""
    try:
        return now_s - parse_duration_s(text)
    except ValueError:
        pass
    try:
        return parse_iso_s(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-11-30T14:00:00Z) nor a duration ago (2h)"
        ) from None


def parse_iso_s(text: str) -> float:
    """Unix seconds of an ISO 8601 time (UTC when no offset is given); ValueError if not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (2026-11-30T14:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(at_s: float) -> str:
    return datetime.fromtimestamp(at_s, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

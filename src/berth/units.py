"""Human-readable units shared by the daemon and the CLI (no layer of its own)."""

from __future__ import annotations

import calendar
import time


def human_duration(seconds: float) -> str:
    """go-units HumanDuration: "Less than a second", "3 seconds", "About a minute", ..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)  # Go's math.Round, not banker's rounding
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def rfc3339_epoch(stamp: object) -> float:
    """Seconds since the epoch of an RFC 3339 time (fractions and offsets allowed); 0
    when absent, Go's zero time, or unreadable."""
    if not isinstance(stamp, str) or len(stamp) < 19 or stamp.startswith("0001-"):
        return 0.0
    try:
        base = float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return 0.0
    rest = stamp[19:]
    if rest[:1] == ".":
        digits = rest[1:]
        rest = digits.lstrip("0123456789")
        fraction = digits[: len(digits) - len(rest)]
        base += float("0." + fraction) if fraction else 0.0
    if rest[:1] in ("+", "-") and len(rest) >= 6:
        offset = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
        base += -offset if rest[0] == "+" else offset
    return base

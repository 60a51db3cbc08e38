"""Docker's list filters (``?filters={"label": {"a=1": true}}``) read one way everywhere."""

from __future__ import annotations

import time
from typing import Any

from berth.errors import InvalidArgument
from berth.units import rfc3339_epoch


def values(filters: dict[str, Any], key: str) -> list[str]:
    """The values given for ``key``: the map form (``{"v": true}``, as the docker CLI
    sends) or the list form (``["v"]``, older clients)."""
    value = filters.get(key)
    if isinstance(value, dict):
        return [k for k, v in value.items() if v]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def label_matches(labels: dict[str, str], wanted: str) -> bool:
    """``label=key`` or ``label=key=value`` against an object's labels."""
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def until_epoch(value: str) -> float:
    """An ``until`` (prune) filter: Unix seconds, an RFC 3339 time or date, or a Go
    duration before now (``10m``, ``24h``)."""
    from berth.images.changes import parse_go_duration

    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if len(text) >= 10 and text[4:5] == "-":
        stamp = text if "T" in text else text + "T00:00:00"
        epoch = rfc3339_epoch(stamp if len(stamp) > 19 else stamp + "Z")
        if epoch:
            return epoch
    try:
        return time.time() - parse_go_duration(text) / 1e9
    except InvalidArgument:
        raise InvalidArgument(
            f"invalid until {value!r}: use a Unix time, an RFC 3339 date or a duration (24h)"
        ) from None

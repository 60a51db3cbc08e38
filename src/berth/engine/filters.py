"""Docker's list filters (``?filters={"label": {"a=1": true}}``) read one way everywhere."""

from __future__ import annotations

from typing import Any


def values(filters: dict[str, Any], key: str) -> list[str]:
    """The values given for ``key``: the map form (``{"v": true}``, as the docker CLI
    sends) or the list form (``["v"]``, older clients)."""
    value = filters.get(key)
    if isinstance(value, dict):
        return [k for k, v in value.items() if v]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []

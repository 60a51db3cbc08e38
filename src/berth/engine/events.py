"""The daemon's event bus: what ``docker events`` streams.

Services publish (container create/start/die/..., image pull/tag/untag/delete,
volume create/mount/unmount/destroy, network ...) from the event loop's thread;
``publish`` may also be called from a worker thread and hops to the loop. The last
``HISTORY`` events stay in memory for ``since`` (as dockerd keeps 256; ours is a
little longer); nothing is persisted, as in Docker.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from berth.errors import InvalidArgument

HISTORY = 1024


def make_event(
    kind: str, action: str, actor_id: str, attributes: dict[str, str] | None = None
) -> dict[str, Any]:
    """An event in the Engine API's shape (with the legacy status/id/from fields)."""
    nano = time.time_ns()
    attrs = dict(attributes or {})
    event: dict[str, Any] = {}
    if kind == "container":
        event["status"] = action
        event["id"] = actor_id
        if "image" in attrs:
            event["from"] = attrs["image"]
    elif kind == "image":
        event["status"] = action
        event["id"] = actor_id
    event.update(
        {
            "Type": kind,
            "Action": action,
            "Actor": {"ID": actor_id, "Attributes": attrs},
            "scope": "local",
            "time": nano // 1_000_000_000,
            "timeNano": nano,
        }
    )
    return event


class EventBus:
    def __init__(self) -> None:
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that owns the subscribers (set once the daemon's loop runs)."""
        self.loop = loop
        self._thread = threading.get_ident()

    def publish(
        self, kind: str, action: str, actor_id: str, attributes: dict[str, str] | None = None
    ) -> None:
        event = make_event(kind, action, actor_id, attributes)
        if self.loop is not None and threading.get_ident() != self._thread:
            self.loop.call_soon_threadsafe(self._deliver, event)
        else:
            self._deliver(event)

    def _deliver(self, event: dict[str, Any]) -> None:
        self.history.append(event)
        for queue in list(self.subscribers):
            queue.put_nowait(event)

    async def stream(
        self,
        *,
        since_nano: int | None = None,
        until_nano: int | None = None,
        closed: Callable[[], bool] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Past events from ``since`` on, then live ones until ``until`` (or forever).

        ``closed`` is asked every second while no event comes, so a client that went
        away does not keep a subscriber alive until the next event.
        """
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.subscribers.add(queue)
        try:
            last = 0
            if since_nano is not None:
                past = list(self.history)
                # the queue also holds what arrives from now on: skip the replayed part
                last = past[-1]["timeNano"] if past else 0
                for event in past:
                    if event["timeNano"] < since_nano:
                        continue
                    if until_nano is not None and event["timeNano"] > until_nano:
                        return
                    yield event
            while True:
                wait: float | None = None if closed is None else 1.0
                if until_nano is not None:
                    remaining = until_nano / 1e9 - time.time()
                    if remaining <= 0:
                        return
                    wait = remaining if wait is None else min(wait, remaining)
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if closed is not None and closed():
                        return
                    continue
                if event["timeNano"] <= last:
                    continue
                if until_nano is not None and event["timeNano"] > until_nano:
                    return
                yield event
        finally:
            self.subscribers.discard(queue)


def parse_timestamp(value: str | None, name: str) -> int | None:
    """Docker's ``since``/``until``: unix seconds with an optional fraction
    (``1700000000.123456789``), as nanoseconds."""
    if value is None or value == "":
        return None
    seconds, _, fraction = value.strip().partition(".")
    negative = seconds.startswith("-")
    if not seconds.lstrip("-").isdigit() or (fraction and not fraction.isdigit()):
        raise InvalidArgument(f"invalid value for {name}: {value!r}: use unix seconds[.nanos]")
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    whole = int(seconds)
    return whole * 1_000_000_000 + (-nanos if negative else nanos)


FILTER_KEYS = (
    "container",
    "daemon",
    "event",
    "action",
    "image",
    "label",
    "network",
    "node",
    "plugin",
    "scope",
    "type",
    "volume",
    "config",
    "secret",
    "service",
)
PREFIX_ACTIONS = ("health_status", "exec_create", "exec_start")
EVENT_TYPES = (
    "builder",
    "config",
    "container",
    "daemon",
    "image",
    "network",
    "node",
    "plugin",
    "secret",
    "service",
    "volume",
)


def _strip_tag(image: str) -> str:
    """``name:tag`` -> ``name`` (a registry's port is not a tag)."""
    name, colon, tag = image.rpartition(":")
    if colon and "/" not in tag and not image.startswith("sha256:"):
        return name
    return image


class EventFilter:
    """Docker's event filters (``daemon/events/filter.go``): each key given must
    match; values of one key are alternatives."""

    def __init__(self, filters: dict[str, Any]) -> None:
        self.values: dict[str, list[str]] = {}
        for key, raw in filters.items():
            if key not in FILTER_KEYS:
                raise InvalidArgument(f"invalid filter '{key}'")
            if isinstance(raw, dict):
                items = [str(k) for k, v in raw.items() if v]
            elif isinstance(raw, list):
                items = [str(v) for v in raw]
            else:
                items = [str(raw)]
            self.values.setdefault("event" if key == "action" else key, []).extend(items)
        for kind in self.values.get("type", []):
            if kind not in EVENT_TYPES:
                raise InvalidArgument(f"invalid event type filter: {kind!r}")
        for scope in self.values.get("scope", []):
            if scope not in ("local", "swarm"):
                raise InvalidArgument(f"invalid scope filter: {scope!r}")

    def _exact(self, key: str, *candidates: str) -> bool:
        wanted = self.values.get(key)
        return not wanted or any(c in wanted for c in candidates)

    def _fuzzy(self, key: str, *candidates: str) -> bool:
        wanted = self.values.get(key)
        if not wanted:
            return True
        return any(c and (c == w or c.startswith(w)) for w in wanted for c in candidates)

    def _name(self, event: dict[str, Any], kind: str) -> bool:
        actor = event.get("Actor") or {}
        return self._fuzzy(
            kind, actor.get("ID", ""), (actor.get("Attributes") or {}).get("name", "")
        )

    def _action(self, action: str) -> bool:
        wanted = self.values.get("event")
        if not wanted:
            return True
        # "health_status", "exec_create", "exec_start" match their "name: detail"
        # actions by prefix (moby #25798); every other action exactly
        return any(action == w or (w in PREFIX_ACTIONS and action.startswith(w)) for w in wanted)

    def _image(self, event: dict[str, Any]) -> bool:
        if "image" not in self.values:
            return True
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        name = attrs.get("name" if event.get("Type") == "image" else "image", "")
        ident = actor.get("ID", "")
        return self._exact("image", ident, name, _strip_tag(ident), _strip_tag(name))

    def _labels(self, attrs: dict[str, str]) -> bool:
        for label in self.values.get("label", []):
            key, eq, value = label.partition("=")
            if key not in attrs or (eq and attrs[key] != value):
                return False
        return True

    def include(self, event: dict[str, Any]) -> bool:
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        return (
            self._action(str(event.get("Action", "")))
            and self._exact("type", str(event.get("Type", "")))
            and self._exact("scope", str(event.get("scope", "local")))
            and self._name(event, "daemon")
            and self._name(event, "container")
            and self._name(event, "plugin")
            and self._name(event, "volume")
            and self._name(event, "network")
            and self._image(event)
            and self._name(event, "node")
            and self._name(event, "service")
            and self._name(event, "secret")
            and self._name(event, "config")
            and self._labels(attrs)
        )

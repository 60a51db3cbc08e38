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
from collections.abc import AsyncIterator
from typing import Any

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
        self, *, since_nano: int | None = None, until_nano: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Past events from ``since`` on, then live ones until ``until`` (or forever)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.subscribers.add(queue)
        try:
            if since_nano is not None:
                for event in list(self.history):
                    if event["timeNano"] < since_nano:
                        continue
                    if until_nano is not None and event["timeNano"] > until_nano:
                        return
                    yield event
                # history and the queue may overlap: skip what was just replayed
                last = self.history[-1]["timeNano"] if self.history else 0
            else:
                last = 0
            while True:
                if until_nano is not None:
                    remaining = until_nano / 1e9 - time.time()
                    if remaining <= 0:
                        return
                    try:
                        event = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        return
                else:
                    event = await queue.get()
                if event["timeNano"] <= last:
                    continue
                if until_nano is not None and event["timeNano"] > until_nano:
                    return
                yield event
        finally:
            self.subscribers.discard(queue)

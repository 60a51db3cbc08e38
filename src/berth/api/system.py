"""System routes: ``/_ping``, ``/version``, ``/info``, ``/events``, ``/system/df``,
``/build/prune`` (an empty build cache)."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from berth.api.server import add, qfilters, services, with_headers
from berth.engine import system
from berth.engine.events import EventFilter, parse_timestamp
from berth.errors import InvalidArgument, NotFound


async def ping(request: web.Request) -> web.StreamResponse:
    response = web.Response(text="OK" if request.method != "HEAD" else None)
    response.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
    response.headers["Pragma"] = "no-cache"
    response.headers["Builder-Version"] = "1"
    return response


async def version(request: web.Request) -> web.StreamResponse:
    return web.json_response(system.version())


async def info(request: web.Request) -> web.StreamResponse:
    s = services(request)
    data = system.info(
        root=s.root,
        counts=s.containers.counts(),
        images=len(s.images.store.images()),
        listeners=len(s.containers.events.subscribers),
    )
    data.update(s.containers.runtime_info())
    return web.json_response(data)


async def events(request: web.Request) -> web.StreamResponse:
    """Docker's event stream: one JSON object a line, each written as it happens.

    With ``since``, the remembered events from then on come first; with ``until``
    the stream ends at that time (at once if it is past)."""
    since = parse_timestamp(request.query.get("since"), "since")
    until = parse_timestamp(request.query.get("until"), "until")
    if since is not None and until is not None and until < since:
        raise InvalidArgument("until must not be before since")
    wanted = EventFilter(qfilters(request))
    bus = services(request).containers.events

    def closed() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    response = with_headers(web.StreamResponse())
    response.content_type = "application/json"
    await response.prepare(request)
    try:
        async for event in bus.stream(since_nano=since, until_nano=until, closed=closed):
            if wanted.include(event):
                await response.write(json.dumps(event).encode() + b"\n")
    except (ConnectionResetError, asyncio.CancelledError):
        return response
    await response.write_eof()
    return response


async def disk_usage(request: web.Request) -> web.StreamResponse:
    """``docker system df``: images, containers, volumes with their sizes; ``type``
    (repeatable, API 1.42+) limits what is computed."""
    types = set(request.query.getall("type", []))
    for kind in types:
        if kind not in system.DF_TYPES:
            raise InvalidArgument(
                f"unknown object type {kind!r}: use container, image, volume or build-cache"
            )
    s = services(request)
    store = s.images.store
    images = s.images.list_images()
    layers = {
        image.id: [(layer.digest, layer.size) for layer in image.layers] for image in store.images()
    }
    containers = s.containers.list(all=True)
    dirs: dict[str, str] = {}
    for container in containers:
        try:
            dirs[container["Id"]] = store.snapshots.fs_path(container["Id"])
        except NotFound:  # no writable layer (any more): size 0
            continue
    data = await asyncio.to_thread(
        system.disk_usage,
        images=images,
        layers=layers,
        containers=containers,
        container_dirs=dirs,
        volumes=s.containers.volumes.usage,
        types=types,
    )
    return web.json_response(data)


async def build_prune(request: web.Request) -> web.StreamResponse:
    """Berth has no build cache yet (``system df`` shows it empty): nothing to prune,
    which ``docker system prune`` must still be told."""
    await request.read()
    return web.json_response({"CachesDeleted": [], "SpaceReclaimed": 0})


def register(app: web.Application) -> None:
    add(app, "GET", "/_ping", ping)
    add(app, "GET", "/version", version)
    add(app, "GET", "/info", info)
    add(app, "GET", "/events", events)
    add(app, "GET", "/system/df", disk_usage)
    add(app, "POST", "/build/prune", build_prune)

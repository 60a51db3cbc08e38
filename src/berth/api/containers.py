"""Container routes: create, start, stop, kill, wait, remove, inspect, list, logs, attach."""

from __future__ import annotations

import contextlib
import json

from aiohttp import web

from berth.api import casing
from berth.api.hijack import MULTIPLEXED_STREAM, RAW_STREAM, STDERR, STDOUT, frame
from berth.api.hijack import attach as hijack_attach
from berth.api.server import (
    add,
    json_body,
    qbool,
    qfilters,
    qint,
    services,
    with_headers,
)
from berth.errors import InvalidArgument


def _id(request: web.Request) -> str:
    return request.match_info["id"]


async def create(request: web.Request) -> web.StreamResponse:
    body = casing.container_body(await json_body(request))
    container_id, warnings = services(request).containers.create(body, request.query.get("name"))
    # Warnings stay in inspect: the CLI would print them on every run.
    del warnings
    return web.json_response({"Id": container_id, "Warnings": []}, status=201)


async def start(request: web.Request) -> web.StreamResponse:
    await request.read()
    await services(request).containers.start(_id(request))
    return web.Response(status=204)


async def stop(request: web.Request) -> web.StreamResponse:
    await services(request).containers.stop(
        _id(request), qint(request, "t"), request.query.get("signal") or None
    )
    return web.Response(status=204)


async def kill(request: web.Request) -> web.StreamResponse:
    await services(request).containers.kill(_id(request), request.query.get("signal"))
    return web.Response(status=204)


async def wait(request: web.Request) -> web.StreamResponse:
    future = await services(request).containers.wait(
        _id(request), request.query.get("condition", "not-running")
    )
    response = with_headers(web.StreamResponse(headers={"Content-Type": "application/json"}))
    await response.prepare(request)  # the waiter is registered: tell the client now
    code = await future
    with contextlib.suppress(ConnectionError, OSError):  # the client went away meanwhile
        await response.write(json.dumps({"Error": None, "StatusCode": code}).encode() + b"\n")
        await response.write_eof()
    return response


async def remove(request: web.Request) -> web.StreamResponse:
    if qbool(request, "link"):
        services(request).containers.remove_link(_id(request))
        return web.Response(status=204)
    await services(request).containers.remove(
        _id(request), force=qbool(request, "force"), volumes=qbool(request, "v")
    )
    return web.Response(status=204)


async def inspect(request: web.Request) -> web.StreamResponse:
    return web.json_response(services(request).containers.inspect(_id(request)))


async def list_containers(request: web.Request) -> web.StreamResponse:
    limit = qint(request, "limit")
    result = services(request).containers.list(
        all=qbool(request, "all"), filters=qfilters(request), limit=limit if limit else -1
    )
    return web.json_response(result)


async def resize(request: web.Request) -> web.StreamResponse:
    service = services(request).containers
    container = service.get(_id(request))
    height, width = qint(request, "h") or 24, qint(request, "w") or 80
    with contextlib.suppress(Exception):
        await service.monitor.call({"op": "resize", "id": container.id, "h": height, "w": width})
    service.publish(container, "resize", height=str(height), width=str(width))
    return web.Response(status=200)


async def update(request: web.Request) -> web.StreamResponse:
    body = casing.host_config(await json_body(request))
    warnings = await services(request).containers.update(_id(request), body)
    return web.json_response({"Warnings": warnings})


async def prune(request: web.Request) -> web.StreamResponse:
    await request.read()
    result = await services(request).containers.prune(qfilters(request))
    return web.json_response(result)


def _since(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        raise InvalidArgument(f"invalid time {value!r}: give seconds since the epoch") from None


async def logs(request: web.Request) -> web.StreamResponse:
    service = services(request).containers
    container = service.get(_id(request))
    want_out, want_err = qbool(request, "stdout"), qbool(request, "stderr")
    if not (want_out or want_err):
        raise InvalidArgument("you must choose at least one stream")
    tty = container.spec.tty
    timestamps = qbool(request, "timestamps")
    entries = service.logs(
        container.id,
        follow=qbool(request, "follow"),
        tail=request.query.get("tail", "all"),
        since=_since(request.query.get("since")),
        until=_since(request.query.get("until")),
    )
    response = with_headers(
        web.StreamResponse(headers={"Content-Type": RAW_STREAM if tty else MULTIPLEXED_STREAM})
    )
    await response.prepare(request)
    async for stream, text, stamp in entries:
        if (stream == "stdout" and not want_out) or (stream == "stderr" and not want_err):
            continue
        data = ((stamp + " ") if timestamps else "") + text
        raw = data.encode()
        try:
            await response.write(
                raw if tty else frame(STDOUT if stream == "stdout" else STDERR, raw)
            )
        except (ConnectionError, OSError):
            break
    with contextlib.suppress(ConnectionError, OSError):
        await response.write_eof()
    return response


def register(app: web.Application) -> None:
    add(app, "POST", "/containers/create", create)
    add(app, "GET", "/containers/json", list_containers)
    add(app, "GET", "/containers/{id}/json", inspect)
    add(app, "POST", "/containers/{id}/start", start)
    add(app, "POST", "/containers/{id}/stop", stop)
    add(app, "POST", "/containers/{id}/kill", kill)
    add(app, "POST", "/containers/{id}/wait", wait)
    add(app, "POST", "/containers/{id}/resize", resize)
    add(app, "POST", "/containers/{id}/attach", hijack_attach)
    add(app, "GET", "/containers/{id}/logs", logs)
    add(app, "POST", "/containers/{id}/update", update)
    add(app, "POST", "/containers/prune", prune)
    add(app, "DELETE", "/containers/{id:.+}", remove)  # PARENT/ALIAS for ?link=1

"""Container routes beyond the lifecycle: pause, unpause, restart, rename, top, stats."""

from __future__ import annotations

import contextlib
import json

from aiohttp import web

from berth.api.server import add, qbool, qint, services, with_headers


def _id(request: web.Request) -> str:
    return request.match_info["id"]


async def pause(request: web.Request) -> web.StreamResponse:
    await services(request).containers.ops.pause(_id(request))
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.StreamResponse:
    await services(request).containers.ops.unpause(_id(request))
    return web.Response(status=204)


async def restart(request: web.Request) -> web.StreamResponse:
    await services(request).containers.ops.restart(
        _id(request), qint(request, "t"), request.query.get("signal") or None
    )
    return web.Response(status=204)


async def rename(request: web.Request) -> web.StreamResponse:
    services(request).containers.ops.rename(_id(request), request.query.get("name", ""))
    return web.Response(status=204)


async def top(request: web.Request) -> web.StreamResponse:
    result = await services(request).containers.ops.top(
        _id(request), request.query.get("ps_args", "")
    )
    return web.json_response(result)


async def stats(request: web.Request) -> web.StreamResponse:
    stream = qbool(request, "stream", True)
    samples = services(request).containers.ops.stats(
        _id(request), stream=stream, one_shot=qbool(request, "one-shot")
    )
    first = await anext(samples)  # errors (no such container) before the headers
    response = with_headers(web.StreamResponse(headers={"Content-Type": "application/json"}))
    await response.prepare(request)
    try:
        await response.write(json.dumps(first).encode() + b"\n")
        async for sample in samples:
            await response.write(json.dumps(sample).encode() + b"\n")
    except (ConnectionError, OSError):
        return response
    finally:
        await samples.aclose()
    with contextlib.suppress(ConnectionError, OSError):
        await response.write_eof()
    return response


def register(app: web.Application) -> None:
    add(app, "POST", "/containers/{id}/pause", pause)
    add(app, "POST", "/containers/{id}/unpause", unpause)
    add(app, "POST", "/containers/{id}/restart", restart)
    add(app, "POST", "/containers/{id}/rename", rename)
    add(app, "GET", "/containers/{id}/top", top)
    add(app, "GET", "/containers/{id}/stats", stats)

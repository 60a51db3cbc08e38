"""Image routes: list, inspect, tag, remove, pull (create), and Berth's bootstrap."""

from __future__ import annotations

import asyncio

from aiohttp import web

from berth.api.server import add, qbool, qfilters, services, with_headers
from berth.errors import InvalidArgument


async def list_images(request: web.Request) -> web.StreamResponse:
    return web.json_response(services(request).images.list_images(filters=qfilters(request)))


async def inspect_image(request: web.Request) -> web.StreamResponse:
    return web.json_response(services(request).images.inspect(request.match_info["name"]))


async def remove_image(request: web.Request) -> web.StreamResponse:
    events = services(request).images.remove(
        request.match_info["name"], force=qbool(request, "force")
    )
    return web.json_response(events)


async def tag_image(request: web.Request) -> web.StreamResponse:
    services(request).images.tag(
        request.match_info["name"], request.query.get("repo", ""), request.query.get("tag", "")
    )
    return web.Response(status=201)


async def create_image(request: web.Request) -> web.StreamResponse:
    """``POST /images/create?fromImage=&tag=``: a pull, as Docker's JSON progress stream."""
    from_image = request.query.get("fromImage", "")
    if not from_image:
        raise InvalidArgument("importing images (fromSrc) is not supported yet: use fromImage")
    await request.read()
    stream = services(request).images.pull(from_image, request.query.get("tag", ""))
    response = with_headers(web.StreamResponse(headers={"Content-Type": "application/json"}))
    await response.prepare(request)
    async for line in stream:
        await response.write(line)
    await response.write_eof()
    return response


async def bootstrap_image(request: web.Request) -> web.StreamResponse:
    """Berth's extension: make a base image locally (Docker Hub is out of reach)."""
    name = request.query.get("name", "busybox")
    image = await asyncio.to_thread(services(request).images.bootstrap, name)
    return web.json_response({"Id": image.id, "RepoTags": image.names}, status=201)


def register(app: web.Application) -> None:
    add(app, "GET", "/images/json", list_images)
    add(app, "POST", "/images/create", create_image)
    add(app, "POST", "/berth/images/bootstrap", bootstrap_image)
    add(app, "GET", "/images/{name:.+}/json", inspect_image)
    add(app, "POST", "/images/{name:.+}/tag", tag_image)
    add(app, "DELETE", "/images/{name:.+}", remove_image)

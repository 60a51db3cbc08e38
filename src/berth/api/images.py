"""Image routes: list, inspect, tag, remove, history, prune, pull/import (create), push,
save (get), load, login (/auth), search (refused), and Berth's bootstrap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from berth.api.server import add, error_response, json_body, qbool, qfilters, services, with_headers
from berth.errors import InvalidArgument


async def list_images(request: web.Request) -> web.StreamResponse:
    return web.json_response(services(request).images.list_images(filters=qfilters(request)))


async def inspect_image(request: web.Request) -> web.StreamResponse:
    return web.json_response(services(request).images.inspect(request.match_info["name"]))


async def history(request: web.Request) -> web.StreamResponse:
    images = services(request).images
    return web.json_response(await asyncio.to_thread(images.history, request.match_info["name"]))


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


async def prune_images(request: web.Request) -> web.StreamResponse:
    images = services(request).images
    result = await asyncio.to_thread(images.prune, qfilters(request), images.in_use())
    return web.json_response(result)


async def _stream(
    request: web.Request, lines: AsyncIterator[bytes], content_type: str = "application/json"
) -> web.StreamResponse:
    """Send ``lines`` as they come (chunked), after the common headers."""
    response = with_headers(web.StreamResponse(headers={"Content-Type": content_type}))
    try:
        await response.prepare(request)
        async for line in lines:
            await response.write(line)
        await response.write_eof()
    except ConnectionError:  # the client went away: nobody to tell
        pass
    finally:
        closer = getattr(lines, "aclose", None)
        if closer is not None:
            await closer()
    return response


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


async def create_image(request: web.Request) -> web.StreamResponse:
    """``POST /images/create``: a pull (``fromImage``) as Docker's JSON progress stream,
    or an import (``fromSrc=-``: the body is a root filesystem tar)."""
    images = services(request).images
    query = request.query
    from_image = query.get("fromImage", "")
    from_src = query.get("fromSrc", "")
    if from_image:
        await request.read()
        stream = images.pull(
            from_image,
            query.get("tag", ""),
            platform=query.get("platform", ""),
            auth=request.headers.get("X-Registry-Auth"),
        )
        return await _stream(request, stream)
    if not from_src:
        raise InvalidArgument("give fromImage (pull) or fromSrc (import) to create an image")
    if from_src != "-":
        raise InvalidArgument(
            f"importing from a URL ({from_src}) is not supported: download it, then import"
            " it from standard input (fromSrc=-)"
        )
    image_id = await images.import_image(
        _body(request),
        repo=query.get("repo", ""),
        tag=query.get("tag", ""),
        changes=query.getall("changes", []),
        message=query.get("message", ""),
        platform=query.get("platform", ""),
    )
    from berth.engine.images import json_line

    return await _stream(request, _one(json_line({"status": image_id})))


async def _one(line: bytes) -> AsyncIterator[bytes]:
    yield line


async def push_image(request: web.Request) -> web.StreamResponse:
    await request.read()
    stream = services(request).images.push(
        request.match_info["name"],
        request.query.get("tag", ""),
        auth=request.headers.get("X-Registry-Auth"),
    )
    return await _stream(request, stream)


async def save_image(request: web.Request) -> web.StreamResponse:
    """``GET /images/{name}/get``: one image (or repository) as a docker-archive tar."""
    stream = services(request).images.save([request.match_info["name"]])
    return await _stream(request, stream, "application/x-tar")


async def save_images(request: web.Request) -> web.StreamResponse:
    """``GET /images/get?names=a&names=b``."""
    names = request.query.getall("names", [])
    if not names:
        raise InvalidArgument("nothing to save: give at least one names= parameter")
    stream = services(request).images.save(names)
    return await _stream(request, stream, "application/x-tar")


async def load_images(request: web.Request) -> web.StreamResponse:
    """``POST /images/load``: dockerd answers 200 and reports a bad archive in the stream."""
    from berth.engine.images import error_line, json_line
    from berth.errors import BerthError

    images = services(request).images

    async def lines() -> AsyncIterator[bytes]:
        try:
            loaded = await images.load(_body(request), quiet=qbool(request, "quiet"))
        except BerthError as exc:
            yield error_line(str(exc))
            return
        for item in loaded:
            what = "Loaded image ID" if item.startswith("sha256:") else "Loaded image"
            yield json_line({"stream": f"{what}: {item}\n"})

    return await _stream(request, lines())


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /auth``: 401 with the registry's refusal, as dockerd answers it."""
    from berth.distribution.client import Unauthorized

    body = await json_body(request)
    try:
        result = await services(request).images.login(body)
    except Unauthorized as exc:
        return error_response(401, str(exc))
    return web.json_response(result)


async def search(request: web.Request) -> web.StreamResponse:
    return error_response(
        501, "image search is not supported by berthd: browse the registry's own catalog"
    )


async def bootstrap_image(request: web.Request) -> web.StreamResponse:
    """Berth's extension: make a base image locally (Docker Hub is out of reach)."""
    name = request.query.get("name", "busybox")
    image = await asyncio.to_thread(services(request).images.bootstrap, name)
    return web.json_response({"Id": image.id, "RepoTags": image.names}, status=201)


def register(app: web.Application) -> None:
    add(app, "GET", "/images/json", list_images)
    add(app, "POST", "/images/create", create_image)
    add(app, "POST", "/images/load", load_images)
    add(app, "POST", "/images/prune", prune_images)
    add(app, "GET", "/images/get", save_images)
    add(app, "GET", "/images/search", search)
    add(app, "POST", "/auth", login)
    add(app, "POST", "/berth/images/bootstrap", bootstrap_image)
    add(app, "GET", "/images/{name:.+}/json", inspect_image)
    add(app, "GET", "/images/{name:.+}/history", history)
    add(app, "GET", "/images/{name:.+}/get", save_image)
    add(app, "POST", "/images/{name:.+}/tag", tag_image)
    add(app, "POST", "/images/{name:.+}/push", push_image)
    add(app, "DELETE", "/images/{name:.+}", remove_image)

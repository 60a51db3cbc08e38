"""``POST /build``: the legacy builder's protocol over ``engine/builds.py``.

The body (a tar, possibly compressed) is unpacked into a context folder while it
arrives; the Dockerfile is parsed and the stages planned before the answer starts, so
a syntax error is a plain 400 that the docker CLI prints as "Error response from
daemon". Then the build runs on a worker thread and its messages stream out as
Docker's JSON lines; a failure is the stream's last line (``errorDetail``, with a
RUN's exit code as ``code``).
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from berth import errors
from berth.api.server import add, qbool, qint, services, with_headers
from berth.build.executor import BuildOptions, normal_tag
from berth.engine.builds import BuildService
from berth.engine.images import json_line, parse_platform

BUILDS = web.AppKey("builds", list)


def _json_map(request: web.Request, name: str) -> dict[str, str]:
    text = request.query.get(name)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise errors.InvalidArgument(f"invalid {name}: not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"invalid {name}: a JSON object is needed")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _json_list(request: web.Request, name: str) -> list[str]:
    text = request.query.get(name)
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return [text]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _extra_hosts(request: web.Request) -> list[str]:
    hosts: list[str] = []
    for item in request.query.getall("extrahosts", []):
        hosts += [h for h in item.split(",") if h]
    return hosts


def _builds(request: web.Request) -> BuildService:
    """The daemon's build service (one step cache per root), made on first use."""
    svc = services(request)
    holder = request.app[BUILDS]
    if not holder:
        holder.append(
            BuildService(svc.images, svc.containers.networks, svc.root, svc.containers.exec_root)
        )
    return holder[0]


async def build(request: web.Request) -> web.StreamResponse:
    q = request.query
    if q.get("remote"):
        raise errors.InvalidArgument(
            "building from a remote context (git or URL) is not supported: send the context"
        )
    platform = q.get("platform") or ""
    if platform:
        parse_platform(platform)
    network = q.get("networkmode") or ""
    if network.startswith("container:"):
        raise errors.InvalidArgument(f"network mode {network!r} is not supported for builds")
    options = BuildOptions(
        dockerfile=q.get("dockerfile") or "Dockerfile",
        tags=[t for t in q.getall("t", []) if t],
        build_args=_json_map(request, "buildargs"),
        labels=_json_map(request, "labels"),
        target=q.get("target") or "",
        no_cache=qbool(request, "nocache"),
        pull=qbool(request, "pull"),
        quiet=qbool(request, "q"),
        network=network,
        extra_hosts=_extra_hosts(request),
        shm_size=qint(request, "shmsize") or 0,
        cache_from=_json_list(request, "cachefrom"),
        platform=platform,
    )
    for tag in options.tags:
        normal_tag(tag)
    build_ = await _builds(request).prepare(
        request.content.iter_chunked(1 << 20), options, request.headers.get("X-Registry-Config")
    )
    response = with_headers(web.StreamResponse(status=200))
    response.content_type = "application/json"
    await response.prepare(request)

    async def watch_client() -> None:
        """A client gone is otherwise seen only at the next write: a silent RUN step
        (or stages held for ordering) would run on for nobody."""
        while True:
            await asyncio.sleep(0.5)
            transport = request.transport
            if transport is None or transport.is_closing():
                build_.cancel()
                return

    watcher = asyncio.create_task(watch_client())
    try:
        async for message in build_.messages():
            await response.write(json_line(message))
    finally:
        watcher.cancel()
    await response.write_eof()
    return response


async def prune(request: web.Request) -> web.Response:
    """``POST /build/prune``: forget every cached step (the blobs go with image gc)."""
    await _builds(request).prune()
    return web.json_response({"CachesDeleted": [], "SpaceReclaimed": 0})


def register(app: web.Application) -> None:
    app[BUILDS] = []
    add(app, "POST", "/build", build)
    add(app, "POST", "/build/prune", prune)

"""``POST /build``: the legacy builder's protocol over the executor in ``berth.build``.

The body (a tar, possibly compressed) is unpacked into a context folder while it
arrives; the Dockerfile is parsed and the stages planned before the answer starts, so
a syntax error is a plain 400 that the docker CLI prints as "Error response from
daemon". Then the build runs on a worker thread and its messages stream out as
Docker's JSON lines; a failure is the stream's last line (``errorDetail``, with a
RUN's exit code as ``code``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import shutil
import sys
import traceback
import uuid
from typing import Any

from aiohttp import web

from berth import errors
from berth.api.server import add, qbool, qint, services, with_headers
from berth.build.cache import BuildCache
from berth.build.context import Context
from berth.build.executor import Builder, BuildFailed, BuildOptions
from berth.engine.images import _feed_thread, json_line, parse_platform

CACHE = web.AppKey("build_cache", dict)


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


def _auth_for(configs: str | None, domain: str) -> str | None:
    """X-Registry-Config (base64 JSON: registry -> auth config) to the X-Registry-Auth
    form the pull takes, for one registry."""
    if not configs:
        return None
    try:
        text = configs.strip()
        doc = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    names = [domain, f"https://{domain}", f"http://{domain}"]
    if domain == "docker.io":
        names += ["https://index.docker.io/v1/", "index.docker.io"]
    for name in names:
        if isinstance(doc.get(name), dict):
            return base64.urlsafe_b64encode(json.dumps(doc[name]).encode()).decode()
    return None


def _cache(request: web.Request, root: str) -> BuildCache:
    caches = request.app[CACHE]
    if root not in caches:
        caches[root] = BuildCache(os.path.join(root, "build"))
    return caches[root]


async def build(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    q = request.query
    if q.get("remote"):
        raise errors.InvalidArgument(
            "building from a remote context (git or URL) is not supported: send the context"
        )
    platform = q.get("platform") or ""
    if platform:
        parse_platform(platform)
    network = q.get("networkmode") or ""
    if network not in ("", "default", "host", "none", "bridge"):
        raise errors.InvalidArgument(
            f"network mode {network!r} is not supported for builds: use host or none"
        )
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
    from berth.build.executor import _normal_tag

    for tag in options.tags:
        _normal_tag(tag)
    build_id = uuid.uuid4().hex
    work_root = os.path.join(svc.containers.exec_root, "build")
    context_dir = os.path.join(svc.root, "build", "contexts", build_id)
    os.makedirs(os.path.dirname(context_dir), mode=0o700, exist_ok=True)
    context = Context(context_dir)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def emit(message: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, message)

    registry_config = request.headers.get("X-Registry-Config")

    def pull(name: str, wanted_platform: str) -> None:
        future = asyncio.run_coroutine_threadsafe(_pull(name, wanted_platform), loop)
        future.result()

    async def _pull(name: str, wanted_platform: str) -> None:
        from berth.images.reference import parse as parse_reference

        domain = parse_reference(name).domain
        error = ""
        async for line in svc.images.pull(
            name, "", platform=wanted_platform, auth=_auth_for(registry_config, domain)
        ):
            doc = json.loads(line)
            if doc.get("error"):
                error = str(doc["error"])
            elif not options.quiet:
                emit(doc)
        if error:
            raise errors.NotFound(error)

    builder = Builder(svc.images.store, _cache(request, svc.root), work_root, emit, pull)
    try:
        await _feed_thread(request.content.iter_chunked(1 << 20), context.extract)
        await asyncio.to_thread(builder.prepare, context, options)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, context_dir, True)
        raise

    response = with_headers(web.StreamResponse(status=200))
    response.content_type = "application/json"
    await response.prepare(request)

    built: list[Any] = []

    def work() -> None:
        try:
            built.append(builder.run())
        except BuildFailed as exc:
            detail: dict[str, Any] = {"message": str(exc)}
            if exc.code:
                detail = {"code": exc.code, "message": str(exc)}
            emit({"errorDetail": detail, "error": str(exc)})
        except errors.BerthError as exc:
            emit({"errorDetail": {"message": str(exc)}, "error": str(exc)})
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            message = f"internal error: {type(exc).__name__}: {exc}"
            emit({"errorDetail": {"message": message}, "error": message})
        finally:
            shutil.rmtree(context_dir, ignore_errors=True)
            loop.call_soon_threadsafe(queue.put_nowait, None)

    task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while (message := await queue.get()) is not None:
            await response.write(json_line(message))
    except (ConnectionResetError, asyncio.CancelledError):
        builder.cancelled.set()
        await asyncio.gather(task, return_exceptions=True)
        raise
    await asyncio.gather(task, return_exceptions=True)
    for image in built:
        for tag in options.tags:
            svc.images._image_event("tag", image.id, image, tag)
    await response.write_eof()
    return response


async def prune(request: web.Request) -> web.Response:
    """``POST /build/prune``: forget every cached step (the blobs go with image gc)."""
    svc = services(request)
    cache = _cache(request, svc.root)
    await asyncio.to_thread(cache.clear)
    return web.json_response({"CachesDeleted": [], "SpaceReclaimed": 0})


def register(app: web.Application) -> None:
    app[CACHE] = {}
    add(app, "POST", "/build", build)
    add(app, "POST", "/build/prune", prune)

"""Container filesystem routes: archive (docker cp), changes (diff), export, commit.

The file work runs in worker threads; tars stream both ways through small bridges
between a thread's blocking reads/writes and the request's asynchronous body.
"""

from __future__ import annotations

import asyncio
import io
import sys
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from aiohttp import StreamReader, web

from berth import errors
from berth.api.server import SERVICES, add, json_body, qbool, services, with_headers
from berth.engine import commit as commits
from berth.engine.archive import ArchiveService, ReadOnly, not_found, stat_header, user_ids

ARCHIVES = web.AppKey("archives", ArchiveService)
_FLUSH = 256 * 1024


def _id(request: web.Request) -> str:
    return request.match_info["id"]


def _archives(request: web.Request) -> ArchiveService:
    return request.app[ARCHIVES]


class _ResponseWriter(io.RawIOBase):
    """A file a worker thread writes to; the bytes go out on the response, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, response: web.StreamResponse) -> None:
        self.loop = loop
        self.response = response
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.buffer += view
        if len(self.buffer) >= _FLUSH:
            self.flush()
        return view.nbytes

    def flush(self) -> None:
        if self.buffer:
            chunk, self.buffer = bytes(self.buffer), bytearray()
            asyncio.run_coroutine_threadsafe(self.response.write(chunk), self.loop).result()


class _RequestReader(io.RawIOBase):
    """The request body as a blocking file for a worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, content: StreamReader) -> None:
        self.loop = loop
        self.content = content

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        future = asyncio.run_coroutine_threadsafe(self.content.read(len(view)), self.loop)
        data = future.result()
        view[: len(data)] = data
        return len(data)


async def _stream_tar(
    request: web.Request, produce: Callable[[io.RawIOBase], None], headers: dict[str, str]
) -> web.StreamResponse:
    """Answer 200 with a tar a worker thread writes; a failure midway cuts the connection
    (the client sees a truncated tar rather than a well-formed partial one)."""
    response = with_headers(
        web.StreamResponse(headers={"Content-Type": "application/x-tar", **headers})
    )
    await response.prepare(request)
    writer = _ResponseWriter(asyncio.get_running_loop(), response)

    def run() -> None:
        produce(writer)
        writer.flush()

    try:
        await asyncio.to_thread(run)
    except (ConnectionError, OSError, errors.BerthError) as exc:
        print(f"berthd: {request.path}: stream broken off: {exc}", file=sys.stderr, flush=True)
        if request.transport is not None:
            request.transport.abort()
        return response
    except Exception:
        traceback.print_exc(file=sys.stderr)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise errors.InvalidArgument("bad parameter: path cannot be empty")
    return path


async def get_archive(request: web.Request) -> web.StreamResponse:
    path = _path(request)
    ref = _id(request)
    archives = _archives(request)
    async with archives.mounted(ref) as (container, fs):
        try:
            info, target = await asyncio.to_thread(fs.stat_path, path)
        except (FileNotFoundError, NotADirectoryError):
            raise not_found(path, ref) from None
        headers = {"X-Docker-Container-Path-Stat": stat_header(info)}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        arcname = info["name"] if info["name"] != "/" else "."
        response = await _stream_tar(
            request, lambda out: fs.write_tar(target, arcname, cast(BinaryIO, out)), headers
        )
    archives.containers.events.publish(
        "container",
        "archive-path",
        container.id,
        {"path": path, "name": container.name, "image": container.spec.image},
    )
    return response


async def put_archive(request: web.Request) -> web.StreamResponse:
    path = _path(request)
    ref = _id(request)
    archives = _archives(request)
    no_overwrite = qbool(request, "noOverwriteDirNonDir")
    copy_ids = qbool(request, "copyUIDGID")
    loop = asyncio.get_running_loop()
    async with archives.mounted(ref) as (container, fs):
        owner = None
        if copy_ids:
            owner = await asyncio.to_thread(user_ids, fs, container.spec.user)
        reader = io.BufferedReader(_RequestReader(loop, request.content), 1 << 20)
        try:
            await asyncio.to_thread(
                fs.extract_to,
                path,
                cast(BinaryIO, reader),
                no_overwrite_dir_non_dir=no_overwrite,
                owner=owner,
            )
        except (FileNotFoundError, NotADirectoryError):
            raise not_found(path, ref) from None
        except ReadOnly as exc:
            raise web.HTTPForbidden(text=str(exc)) from None
        except OSError as exc:
            raise errors.SystemFailure(
                f"cannot extract into {path}: {exc.strerror or exc}"
            ) from None
    archives.containers.events.publish(
        "container",
        "extract-to-dir",
        container.id,
        {"path": path, "name": container.name, "image": container.spec.image},
    )
    return web.Response(status=200)


async def changes(request: web.Request) -> web.StreamResponse:
    result = await asyncio.to_thread(_archives(request).changes, _id(request))
    return web.json_response(result)


async def export(request: web.Request) -> web.StreamResponse:
    from berth.images.layer import tar_directory

    archives = _archives(request)
    async with archives.mounted(_id(request)) as (container, fs):

        def produce(out: io.RawIOBase) -> None:
            tar_directory(fs.rootfs, cast(BinaryIO, out), compression="none")

        response = await _stream_tar(request, produce, {})
    archives.containers.events.publish(
        "container", "export", container.id, {"name": container.name, "image": container.spec.image}
    )
    return response


async def commit(request: web.Request) -> web.StreamResponse:
    ref = request.query.get("container", "")
    if not ref:
        raise errors.InvalidArgument("a container is needed: give container=NAME or ID")
    body = await json_body(request)
    image_id = await commits.commit(
        services(request).containers,
        ref,
        repo=request.query.get("repo", ""),
        tag=request.query.get("tag", ""),
        comment=request.query.get("comment", ""),
        author=request.query.get("author", ""),
        pause=qbool(request, "pause", True),
        changes=request.query.getall("changes", []),
        config=body or None,
    )
    return web.json_response({"Id": image_id}, status=201)


def register(app: web.Application) -> None:
    app[ARCHIVES] = ArchiveService(app[SERVICES].containers)
    add(app, "GET", "/containers/{id}/archive", get_archive)  # HEAD too
    add(app, "PUT", "/containers/{id}/archive", put_archive)
    add(app, "GET", "/containers/{id}/changes", changes)
    add(app, "GET", "/containers/{id}/export", export)
    add(app, "POST", "/commit", commit)

"""Berth's registry server: the OCI distribution-spec v1.1 API over aiohttp.

Handlers stay thin over :class:`RegistryStore`. Bodies are streamed to disk in batches
and hashed on the way (one executor job per batch, overlapping the next network read),
blobs are served with sendfile (``FileResponse``, which also answers Range requests),
and blocking filesystem work runs in threads so one slow disk operation never stalls
other clients. Upload sessions live on disk, so a chunked push continues across
requests, connections and server restarts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import os
import re
import ssl
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from berth.distribution import registry_store as rs
from berth.distribution.htpasswd import Htpasswd
from berth.errors import BerthError, ConfigError, InvalidArgument, NotFound

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REALM = "berth-registry"
OCTET_STREAM = "application/octet-stream"
_BATCH = 1 << 20  # bytes gathered from the socket before one write+hash job
_READ_BUFSIZE = 4 << 20
_PAGE_MAX = 10000

# /v2/<tail>: the route a tail takes, first match wins (names may contain slashes).
_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r""), "base"),
    (re.compile(r"_catalog"), "catalog"),
    (re.compile(r"(?P<name>.+)/tags/list"), "tags"),
    (re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)"), "manifest"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/?"), "uploads"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/(?P<upload>[^/]+)"), "upload"),
    (re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)"), "blob"),
    (re.compile(r"(?P<name>.+)/referrers/(?P<digest>[^/]+)"), "referrers"),
]
_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")


def _error(
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in the spec's format: {"errors": [{"code", "message", "detail"}]}."""
    body = {"errors": [{"code": code, "message": message, "detail": detail}]}
    return web.json_response(body, status=status, headers=headers)


def _content_range(request: web.Request) -> tuple[int, int] | None:
    value = request.headers.get("Content-Range")
    if value is None:
        return None
    match = _CONTENT_RANGE_RE.fullmatch(value.strip())
    if match is None or int(match.group(1)) > int(match.group(2)):
        raise rs.RangeInvalid(f"invalid Content-Range {value!r}: expected <start>-<end>", -1)
    return int(match.group(1)), int(match.group(2))


def _upload_range(size: int) -> str:
    """The Range header of an upload: the inclusive span received so far."""
    return f"0-{max(size - 1, 0)}"


def _digest_param(request: web.Request) -> rs.Digest:
    value = request.query.get("digest")
    if not value:
        raise rs.DigestInvalid("the digest query parameter is required to finish an upload")
    return rs.parse_digest(value)


def _page(request: web.Request, items: list[str], path: str) -> tuple[list[str], str | None]:
    """Apply ``n`` and ``last``; return the page and the Link header to the next one."""
    last = request.query.get("last")
    if last:
        items = [item for item in items if item > last]
    raw = request.query.get("n")
    if raw is None or raw == "":
        return items, None
    if not raw.isdigit():
        raise _PaginationInvalid(f"invalid page size n={raw!r}: use a non-negative integer")
    n = min(int(raw), _PAGE_MAX)
    if n == 0:
        return [], None
    if len(items) <= n:
        return items, None
    page = items[:n]
    return page, f'<{path}?{urlencode({"n": n, "last": page[-1]})}>; rel="next"'


class _PaginationInvalid(rs.RegistryError, InvalidArgument):
    code, status = "PAGINATION_NUMBER_INVALID", 400


class _RouteUnknown(rs.RegistryError, NotFound):
    code, status = "NOT_FOUND", 404


class RegistryServer:
    """An OCI distribution registry over one storage root.

    ``htpasswd`` (a path or an :class:`Htpasswd`) turns on HTTP basic auth;
    ``ssl_context`` serves HTTPS. ``fsync=False`` trades crash safety for speed.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        htpasswd: str | os.PathLike[str] | Htpasswd | None = None,
        ssl_context: ssl.SSLContext | None = None,
        *,
        fsync: bool = True,
    ) -> None:
        self.store = rs.RegistryStore(root, fsync=fsync)
        self.htpasswd = (
            htpasswd if isinstance(htpasswd, Htpasswd) or htpasswd is None else Htpasswd(htpasswd)
        )
        self.ssl_context = ssl_context
        self.host = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._routes: dict[tuple[str, str], Callable[..., Awaitable[web.StreamResponse]]] = {
            ("base", "GET"): self._base,
            ("catalog", "GET"): self._catalog,
            ("tags", "GET"): self._tags,
            ("manifest", "GET"): self._get_manifest,
            ("manifest", "PUT"): self._put_manifest,
            ("manifest", "DELETE"): self._delete_manifest,
            ("uploads", "POST"): self._start_upload,
            ("upload", "GET"): self._upload_status,
            ("upload", "PATCH"): self._patch_upload,
            ("upload", "PUT"): self._finish_upload,
            ("upload", "DELETE"): self._cancel_upload,
            ("blob", "GET"): self._get_blob,
            ("blob", "DELETE"): self._delete_blob,
            ("referrers", "GET"): self._referrers,
        }

    # -- lifecycle ---------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/v2", self._dispatch)
        app.router.add_route("*", "/v2/{tail:.*}", self._dispatch)
        app.on_response_prepare.append(self._add_version_header)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 picks a free port) and return the port."""
        runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            handle_signals=False,
            auto_decompress=False,
            read_bufsize=_READ_BUFSIZE,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=self.ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    # -- plumbing ----------------------------------------------------------------------

    @staticmethod
    async def _add_version_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Docker-Distribution-API-Version"] = "registry/2.0"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if self.htpasswd is not None and not await self._authorized(request):
                return _error(
                    401,
                    "UNAUTHORIZED",
                    "authentication required",
                    headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
                )
            return await handler(request)
        except rs.RegistryError as e:
            return _error(e.status, e.code, str(e), e.detail)
        except BerthError as e:
            return _error(400, "UNSUPPORTED", str(e))
        except web.HTTPException:
            raise
        except (ConnectionError, HttpProcessingError) as e:
            # the client went away or sent a broken body: the upload kept its last good state
            return _error(400, "BLOB_UPLOAD_INVALID", f"request body incomplete: {e}")
        except Exception as e:
            print(
                f"berth registry: error: {request.method} {request.path}: {type(e).__name__}: {e}",
                file=sys.stderr,
            )
            return _error(500, "UNKNOWN", "internal error, see the registry's log")

    async def _authorized(self, request: web.Request) -> bool:
        assert self.htpasswd is not None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        if self.htpasswd.cached(user, password):
            return True
        return await self._thread(self.htpasswd.check, user, password)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        method = "GET" if request.method == "HEAD" else request.method
        for pattern, route in _ROUTES:
            match = pattern.fullmatch(tail)
            if match is None:
                continue
            handler = self._routes.get((route, method))
            if handler is None:
                allowed = sorted({m for (r, m) in self._routes if r == route})
                if "GET" in allowed:
                    allowed.append("HEAD")
                return _error(
                    405,
                    "UNSUPPORTED",
                    f"method {request.method} is not supported on {request.path}",
                    headers={"Allow": ", ".join(allowed)},
                )
            params = match.groupdict()
            if "name" in params:
                rs.validate_name(params["name"])
            return await handler(request, **params)
        raise _RouteUnknown(f"no registry endpoint at {request.path}")

    @staticmethod
    async def _thread(fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args))

    def _lock(self, upload_id: str) -> asyncio.Lock:
        """One request at a time per upload session, so chunk order checks are exact."""
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[upload_id] = lock
        return lock

    async def _receive(self, request: web.Request, writer: rs.UploadWriter) -> int:
        """Stream the request body into the upload; a write overlaps the next read."""
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        batch: list[bytes] = []
        size = total = 0
        try:
            async for chunk in request.content.iter_any():
                batch.append(chunk)
                size += len(chunk)
                if size >= _BATCH:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, writer.write, batch)
                    total += size
                    batch, size = [], 0
            if pending is not None:
                await pending
                pending = None
            if batch:
                await loop.run_in_executor(None, writer.write, batch)
                total += size
        except BaseException:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await pending
            raise
        return total

    @staticmethod
    async def _read_limited(request: web.Request, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _ManifestTooLarge(f"manifest is larger than {limit} bytes", {"limit": limit})
            parts.append(chunk)
        return b"".join(parts)

    @staticmethod
    def _bytes_response(
        request: web.Request, body: bytes, headers: dict[str, str], status: int = 200
    ) -> web.Response:
        if request.method == "HEAD":
            return web.Response(
                status=status, headers={**headers, "Content-Length": str(len(body))}
            )
        return web.Response(status=status, body=body, headers=headers)

    # -- base, catalog, tags, referrers ------------------------------------------------

    async def _base(self, request: web.Request) -> web.StreamResponse:
        return self._bytes_response(request, b"{}", {"Content-Type": "application/json"})

    async def _catalog(self, request: web.Request) -> web.StreamResponse:
        repositories = await self._thread(self.store.catalog)
        page, link = _page(request, repositories, "/v2/_catalog")
        headers = {"Link": link} if link else None
        return web.json_response({"repositories": page}, headers=headers)

    async def _tags(self, request: web.Request, name: str) -> web.StreamResponse:
        tags = await self._thread(self.store.tags, name)
        page, link = _page(request, tags, f"/v2/{name}/tags/list")
        headers = {"Link": link} if link else None
        return web.json_response({"name": name, "tags": page}, headers=headers)

    async def _referrers(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        subject = rs.parse_digest(digest)
        artifact_type = request.query.get("artifactType") or None
        manifests = await self._thread(self.store.referrers, name, subject, artifact_type)
        body = {"schemaVersion": 2, "mediaType": rs.OCI_INDEX, "manifests": manifests}
        headers = {"Content-Type": rs.OCI_INDEX}
        if artifact_type is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        return self._bytes_response(request, json.dumps(body).encode(), headers)

    # -- manifests ---------------------------------------------------------------------

    async def _get_manifest(
        self, request: web.Request, name: str, reference: str
    ) -> web.StreamResponse:
        record = await self._thread(self.store.get_manifest, name, reference)
        headers = {"Content-Type": record.media_type, "Docker-Content-Digest": str(record.digest)}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(record.size)})
        body = await self._thread(record.path.read_bytes)
        return web.Response(body=body, headers=headers)

    async def _put_manifest(
        self, request: web.Request, name: str, reference: str
    ) -> web.StreamResponse:
        body = await self._read_limited(request, rs.MANIFEST_MAX_BYTES)
        tags = request.query.getall("tag", [])
        result = await self._thread(
            self.store.put_manifest,
            name,
            reference,
            body,
            request.headers.get("Content-Type"),
            tags,
        )
        response = web.Response(status=201)
        response.headers["Location"] = f"/v2/{name}/manifests/{result.digest}"
        response.headers["Docker-Content-Digest"] = str(result.digest)
        if result.subject is not None:
            response.headers["OCI-Subject"] = result.subject
        if tags:
            for tag in result.tags:
                response.headers.add("OCI-Tag", tag)
        return response

    async def _delete_manifest(
        self, request: web.Request, name: str, reference: str
    ) -> web.StreamResponse:
        await self._thread(self.store.delete_manifest, name, reference)
        return web.Response(status=202)

    # -- blobs -------------------------------------------------------------------------

    async def _get_blob(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        parsed = rs.parse_digest(digest)
        path, _ = await self._thread(self.store.stat_blob, name, parsed)
        headers = {"Content-Type": OCTET_STREAM, "Docker-Content-Digest": str(parsed)}
        return web.FileResponse(path, headers=headers)

    async def _delete_blob(
        self, request: web.Request, name: str, digest: str
    ) -> web.StreamResponse:
        await self._thread(self.store.delete_blob, name, rs.parse_digest(digest))
        return web.Response(status=202)

    def _blob_created(self, name: str, digest: rs.Digest) -> web.Response:
        return web.Response(
            status=201,
            headers={
                "Location": f"/v2/{name}/blobs/{digest}",
                "Docker-Content-Digest": str(digest),
            },
        )

    def _upload_accepted(
        self, name: str, upload_id: str, size: int, status: int = 202
    ) -> web.Response:
        return web.Response(status=status, headers=self._upload_headers(name, upload_id, size))

    @staticmethod
    def _upload_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
        return {
            "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
            "Range": _upload_range(size),
            "Docker-Upload-UUID": upload_id,
        }

    async def _start_upload(self, request: web.Request, name: str) -> web.StreamResponse:
        mount = request.query.get("mount")
        if mount:
            mounted = rs.parse_digest(mount)
            source = request.query.get("from") or None
            if await self._thread(self.store.mount_blob, name, mounted, source):
                return self._blob_created(name, mounted)
        monolithic = request.query.get("digest")
        digest = rs.parse_digest(monolithic) if monolithic else None
        upload_id = await self._thread(self.store.new_upload, name)
        if digest is None:
            return self._upload_accepted(name, upload_id, 0)
        async with self._lock(upload_id):
            try:
                writer = await self._thread(self.store.open_upload, name, upload_id)
                writer.start_hash(digest.algorithm)
                try:
                    await self._receive(request, writer)
                except BaseException:
                    writer.abort()
                    raise
                await self._thread(writer.commit, digest)
            except BaseException:
                with contextlib.suppress(rs.RegistryError, OSError):
                    await self._thread(self.store.cancel_upload, name, upload_id)
                raise
        return self._blob_created(name, digest)

    async def _upload_status(
        self, request: web.Request, name: str, upload: str
    ) -> web.StreamResponse:
        size = await self._thread(self.store.upload_size, name, upload)
        return self._upload_accepted(name, upload, size, status=204)

    async def _write_chunk(
        self, request: web.Request, name: str, upload: str, final: rs.Digest | None
    ) -> web.StreamResponse:
        """PATCH a chunk, or PUT the last one (possibly empty) and commit the blob."""
        async with self._lock(upload):
            writer = await self._thread(self.store.open_upload, name, upload)
            try:
                span = _content_range(request)
                if span is not None and span[0] != writer.offset:
                    raise rs.RangeInvalid(
                        f"chunk starts at byte {span[0]} but upload {upload} holds "
                        f"{writer.offset} bytes: resume from {writer.offset}",
                        writer.offset,
                    )
                received = await self._receive(request, writer)
                if span is not None and received != span[1] - span[0] + 1:
                    raise rs.SizeInvalid(
                        f"chunk of {received} bytes does not fill Content-Range "
                        f"{span[0]}-{span[1]}",
                        {"received": received},
                    )
            except rs.RangeInvalid as e:
                writer.abort()
                size = writer.offset if e.offset < 0 else e.offset
                return _error(
                    416, e.code, str(e), e.detail, headers=self._upload_headers(name, upload, size)
                )
            except BaseException:
                writer.abort()
                raise
            if final is None:
                writer.close()
                return self._upload_accepted(name, upload, writer.offset)
            try:
                await self._thread(writer.commit, final)
            except rs.DigestInvalid:
                with contextlib.suppress(rs.RegistryError, OSError):
                    await self._thread(self.store.cancel_upload, name, upload)
                raise
            return self._blob_created(name, final)

    async def _patch_upload(
        self, request: web.Request, name: str, upload: str
    ) -> web.StreamResponse:
        return await self._write_chunk(request, name, upload, None)

    async def _finish_upload(
        self, request: web.Request, name: str, upload: str
    ) -> web.StreamResponse:
        return await self._write_chunk(request, name, upload, _digest_param(request))

    async def _cancel_upload(
        self, request: web.Request, name: str, upload: str
    ) -> web.StreamResponse:
        async with self._lock(upload):
            await self._thread(self.store.cancel_upload, name, upload)
        return web.Response(status=204)


class _ManifestTooLarge(rs.RegistryError, InvalidArgument):
    code, status = "SIZE_INVALID", 413


class ServerThread:
    """A registry serving from a background thread (tests, embedding); ``close()`` stops it."""

    def __init__(self, server: RegistryServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host_port(self) -> str:
        """host:port, as image references name the registry."""
        return self.url.split("://", 1)[1]

    def _main(self, host: str, port: int) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self.server.start(host, port))
            except BaseException as e:
                self._error = e
                return
            finally:
                self._started.set()
            loop.run_forever()
            loop.run_until_complete(self.server.stop())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def start(self, host: str, port: int) -> ServerThread:
        self._thread = threading.Thread(
            target=self._main, args=(host, port), name="berth-registry", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def close(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_in_thread(
    root: str | os.PathLike[str],
    htpasswd: str | os.PathLike[str] | Htpasswd | None = None,
    ssl_context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    fsync: bool = True,
) -> ServerThread:
    """Start a registry in a background thread; returns once it listens."""
    server = RegistryServer(root, htpasswd=htpasswd, ssl_context=ssl_context, fsync=fsync)
    return ServerThread(server).start(host, port)


def ssl_context_from_files(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context from PEM files, with a one-line error when they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
        raise ConfigError(f"cannot load TLS certificate {cert} with key {key}: {reason}") from None
    return context


__all__: Sequence[str] = [
    "RegistryServer",
    "ServerThread",
    "run_in_thread",
    "ssl_context_from_files",
]

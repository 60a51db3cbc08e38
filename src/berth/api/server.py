"""The aiohttp application: versioned routes, the one error mapping, request helpers.

Every route answers with and without a ``/v1.NN`` prefix. Handlers stay thin over
the engine's services (``request.app[SERVICES]``). Errors are mapped to HTTP in
:func:`status_for` alone, with Docker's body ``{"message": "..."}``; no traceback
reaches a client (it goes to the daemon's stderr).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from berth import errors
from berth.engine import system
from berth.engine.containers import ContainerService, NotModified
from berth.engine.images import ImageService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVER = f"berth/{system.VERSION}"


@dataclass
class Services:
    containers: ContainerService
    images: ImageService
    root: str


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def status_for(exc: BaseException) -> int:
    """The one place where errors become HTTP statuses."""
    if isinstance(exc, NotModified):
        return 304
    if isinstance(exc, errors.InvalidArgument | errors.ConfigError):
        return 400
    if isinstance(exc, errors.NotFound):
        return 404
    if isinstance(exc, errors.Conflict):
        return 409
    return 500


def error_response(status: int, message: str) -> web.Response:
    if status == 304:
        return web.Response(status=304)
    # Exactly "application/json": the docker CLI decodes the message only then.
    body = json.dumps({"message": message}).encode()
    return web.Response(body=body, status=status, content_type="application/json")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else ""
        if exc.status == 404 and not message:
            message = "page not found"
        return error_response(exc.status, message or exc.reason)
    except errors.BerthError as exc:
        return error_response(status_for(exc), str(exc))
    except json.JSONDecodeError as exc:
        return error_response(400, f"invalid JSON in the request body: {exc}")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
    return response


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("Server", SERVER)
        response.headers.setdefault("Api-Version", system.API_VERSION)
        response.headers.setdefault("Docker-Experimental", "false")
        response.headers.setdefault("Ostype", "linux")
    return response


# ---- request helpers -------------------------------------------------------------------


def api_version(request: web.Request) -> tuple[int, int]:
    """The API version the client asked for (``/v1.NN/...``), else the newest."""
    text = request.match_info.get("version") or system.API_VERSION
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def qbool(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("", "0", "false", "no")


def qint(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.InvalidArgument(f"invalid value for {name}: {value!r}") from None


def qfilters(request: web.Request) -> dict[str, Any]:
    text = request.query.get("filters")
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise errors.InvalidArgument(f"invalid filters: {text!r}") from None
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"invalid filters: {text!r}")
    return value


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise errors.InvalidArgument("the request body must be a JSON object")
    return body


def with_headers(response: web.StreamResponse) -> web.StreamResponse:
    """For responses prepared inside a handler (streams): the common headers first."""
    response.headers["Server"] = SERVER
    response.headers["Api-Version"] = system.API_VERSION
    response.headers["Docker-Experimental"] = "false"
    response.headers["Ostype"] = "linux"
    return response


def add(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """Register ``path`` and ``/v{version}{path}``."""
    for prefix in ("", r"/v{version:[0-9]+\.[0-9]+}"):
        if method == "GET":
            app.router.add_get(prefix + path, handler)  # HEAD too
        else:
            app.router.add_route(method, prefix + path, handler)


def make_app(services_: Services) -> web.Application:
    from berth.api import archive as archive_routes
    from berth.api import build as build_routes
    from berth.api import container_ops, containers, execs, images, networks, volumes
    from berth.api import system as system_routes

    app = web.Application(
        middlewares=[headers_middleware, error_middleware], client_max_size=64 * 1024**2
    )
    app[SERVICES] = services_
    system_routes.register(app)
    images.register(app)
    containers.register(app)
    execs.register(app)
    container_ops.register(app)
    volumes.register(app)
    networks.register(app)
    archive_routes.register(app)
    build_routes.register(app)
    return app

"""Network routes: create, list, inspect, remove, connect, disconnect, prune."""

from __future__ import annotations

from aiohttp import web

from berth.api.server import add, error_response, json_body, qfilters, services
from berth.engine.network.service import NetworkService
from berth.errors import InvalidArgument


def _networks(request: web.Request) -> NetworkService:
    return services(request).containers.networks


async def create(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    return web.json_response(await _networks(request).create(body), status=201)


async def list_networks(request: web.Request) -> web.StreamResponse:
    return web.json_response(_networks(request).list_networks(qfilters(request)))


async def inspect(request: web.Request) -> web.StreamResponse:
    return web.json_response(_networks(request).inspect(request.match_info["id"]))


async def remove(request: web.Request) -> web.StreamResponse:
    await _networks(request).remove(request.match_info["id"])
    return web.Response(status=204)


async def connect(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    container = body.get("Container")
    if not isinstance(container, str) or not container:
        raise InvalidArgument("Container is required to connect a container to a network")
    config = body.get("EndpointConfig") or {}
    if not isinstance(config, dict):
        raise InvalidArgument("EndpointConfig must be an object")
    await _networks(request).connect(request.match_info["id"], container, config)
    return web.Response(status=200)


async def disconnect(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    container = body.get("Container")
    if not isinstance(container, str) or not container:
        raise InvalidArgument("Container is required to disconnect a container from a network")
    await _networks(request).disconnect(
        request.match_info["id"], container, force=bool(body.get("Force"))
    )
    return web.Response(status=200)


async def prune(request: web.Request) -> web.StreamResponse:
    await request.read()
    deleted = await _networks(request).prune(qfilters(request))
    return web.json_response({"NetworksDeleted": deleted})


async def swarm_leave(request: web.Request) -> web.StreamResponse:
    """No swarm here: dockerd's answer for a node outside one (docker-py's network tests
    call ``leave_swarm(force=True)`` after each test and accept exactly this)."""
    await request.read()
    return error_response(503, "This node is not part of a swarm")


def register(app: web.Application) -> None:
    add(app, "POST", "/swarm/leave", swarm_leave)
    add(app, "POST", "/networks/create", create)
    add(app, "POST", "/networks/prune", prune)
    add(app, "GET", "/networks", list_networks)
    add(app, "GET", "/networks/{id}", inspect)
    add(app, "DELETE", "/networks/{id}", remove)
    add(app, "POST", "/networks/{id}/connect", connect)
    add(app, "POST", "/networks/{id}/disconnect", disconnect)

"""Volume routes: create, list, inspect, remove, prune (the ``local`` driver only)."""

from __future__ import annotations

from aiohttp import web

from berth.api.server import add, api_version, json_body, qbool, qfilters, services
from berth.engine.volumes import VolumeService
from berth.errors import InvalidArgument


def _volumes(request: web.Request) -> VolumeService:
    return services(request).containers.volumes


async def create(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    name = body.get("Name") or ""
    driver = body.get("Driver") or ""
    if not isinstance(name, str) or not isinstance(driver, str):
        raise InvalidArgument("volume Name and Driver must be strings")
    volume = _volumes(request).create(
        name,
        driver=driver,
        labels=body.get("Labels"),
        driver_opts=body.get("DriverOpts"),
    )
    return web.json_response(volume, status=201)


async def list_volumes(request: web.Request) -> web.StreamResponse:
    volumes = _volumes(request).list_volumes(qfilters(request))
    return web.json_response({"Volumes": volumes, "Warnings": []})


async def inspect(request: web.Request) -> web.StreamResponse:
    return web.json_response(_volumes(request).get(request.match_info["name"]))


async def remove(request: web.Request) -> web.StreamResponse:
    _volumes(request).remove(request.match_info["name"], force=qbool(request, "force"))
    return web.Response(status=204)


async def prune(request: web.Request) -> web.StreamResponse:
    """Unused anonymous volumes; named ones too with ``all=true``, or always before
    API 1.42 (when prune did not know anonymous volumes)."""
    await request.read()
    filters = qfilters(request)
    if api_version(request) < (1, 42):
        filters = {**filters, "all": ["true"]}
    deleted, reclaimed = _volumes(request).prune(filters)
    return web.json_response({"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed})


def register(app: web.Application) -> None:
    add(app, "POST", "/volumes/create", create)
    add(app, "POST", "/volumes/prune", prune)
    add(app, "GET", "/volumes", list_volumes)
    add(app, "GET", "/volumes/{name}", inspect)
    add(app, "DELETE", "/volumes/{name}", remove)

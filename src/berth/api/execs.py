"""Exec routes: create, start (hijacked like attach), resize, inspect."""

from __future__ import annotations

from aiohttp import web

from berth.api.hijack import MULTIPLEXED_STREAM, RAW_STREAM, STDERR, frame, hijack, splice
from berth.api.server import add, json_body, qint, services
from berth.engine.execs import ExecFailed


async def create(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    exec_id = services(request).containers.execs.create(request.match_info["id"], body)
    return web.json_response({"Id": exec_id}, status=201)


async def start(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    execs = services(request).containers.execs
    tty = body.get("Tty")
    detach = bool(body.get("Detach"))
    try:
        record, m_reader, m_writer = await execs.start(
            request.match_info["id"], detach=detach, tty=None if tty is None else bool(tty)
        )
    except ExecFailed as exc:
        if detach:
            raise
        # As Docker: the stream carries the error, the exec's exit code says 126/127.
        record = execs.get(request.match_info["id"])
        client = await hijack(request, RAW_STREAM if record.tty else MULTIPLEXED_STREAM)
        message = f"{exc}\r\n".encode() if record.tty else frame(STDERR, f"{exc}\n".encode())
        await client.write(message)
        client.close()
        return client.response
    if m_reader is None or m_writer is None:
        return web.Response(status=200)
    try:
        client = await hijack(request, RAW_STREAM if record.tty else MULTIPLEXED_STREAM)
    except BaseException:
        m_writer.close()
        raise
    try:
        await splice(client, m_reader, m_writer)
        # The client asks for the exit code as soon as its stream ends: record it first.
        await execs.wait_exit(record)
    finally:
        m_writer.close()
        client.close()
    return client.response


async def resize(request: web.Request) -> web.StreamResponse:
    await services(request).containers.execs.resize(
        request.match_info["id"], qint(request, "h") or 24, qint(request, "w") or 80
    )
    return web.Response(status=200)


async def inspect(request: web.Request) -> web.StreamResponse:
    return web.json_response(services(request).containers.execs.inspect(request.match_info["id"]))


def register(app: web.Application) -> None:
    add(app, "POST", "/containers/{id}/exec", create)
    add(app, "POST", "/exec/{id}/start", start)
    add(app, "POST", "/exec/{id}/resize", resize)
    add(app, "GET", "/exec/{id}/json", inspect)

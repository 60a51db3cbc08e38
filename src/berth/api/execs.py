"""Exec routes: create, start (hijacked like attach), resize, inspect; and the
websocket attach (``/containers/{id}/attach/ws``), which shares the hijack code."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from berth.api.hijack import (
    MULTIPLEXED_STREAM,
    RAW_STREAM,
    STDERR,
    STDOUT,
    Deframer,
    Hijacked,
    attach_ws,
    drain_later,
    frame,
    framed,
    hijack,
    splice,
)
from berth.api.server import add, json_body, qint, services
from berth.engine.execs import ExecFailed
from berth.errors import BerthError


async def create(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    exec_id = services(request).containers.execs.create(request.match_info["id"], body)
    return web.json_response({"Id": exec_id}, status=201)


async def start(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    execs = services(request).containers.execs
    detach = bool(body.get("Detach"))
    record = execs.get(request.match_info["id"])
    # As Docker: the process has a terminal if the exec was created with one; the
    # start's Tty only says how the stream is framed (raw, or Docker's frames).
    raw = bool(body["Tty"]) if body.get("Tty") is not None else record.tty
    content_type = RAW_STREAM if raw else MULTIPLEXED_STREAM
    hijacked: list[Hijacked] = []

    async def answer() -> None:
        """The 101 goes out before the process starts (dockerd's order)."""
        if not detach:
            hijacked.append(await hijack(request, content_type))

    try:
        record, m_reader, m_writer = await execs.start(
            record.id, detach=detach, before_launch=answer
        )
    except BerthError as exc:
        if detach or (not hijacked and not isinstance(exc, ExecFailed)):
            raise
        # As Docker: the stream carries the error, the exec's exit code says 126/127.
        client = hijacked[0] if hijacked else await hijack(request, content_type)
        message = f"{exc}\r\n".encode() if raw else frame(STDERR, f"{exc}\n".encode())
        await client.write(message)
        client.close()
        return client.response
    if m_reader is None or m_writer is None:
        return web.Response(status=200)
    client = hijacked[0]
    transform: Callable[[bytes], bytes] | None = None
    if record.tty and not raw:
        transform = framed(STDOUT)
    elif raw and not record.tty:
        transform = Deframer()
    detached = False
    try:
        detached = await splice(
            client,
            m_reader,
            m_writer,
            detach_keys=record.detach_key_bytes if record.attach_stdin else None,
            transform=transform,
        )
        if not detached:
            # The client asks for the exit code as soon as its stream ends: record it first.
            await execs.wait_exit(record)
    finally:
        client.close()
        if detached:
            drain_later(m_reader, m_writer)  # closing it would close the exec's stdin
        else:
            m_writer.close()
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
    add(app, "GET", "/containers/{id}/attach/ws", attach_ws)

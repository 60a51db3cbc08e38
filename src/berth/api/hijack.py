"""Connection hijacking for attach and exec, Docker's stream framing, detach keys.

The docker CLI needs ``101 UPGRADED`` (a 200 breaks it). After the status line the
socket is taken from aiohttp: its transport moves to a ``StreamReaderProtocol`` whose
``eof_received`` keeps the socket open for writing, so a client that half-closes
(stdin at EOF) still receives the container's output.

Detach keys (default ctrl-p,ctrl-q): when the sequence arrives on a hijacked stdin the
daemon stops forwarding and closes the client's connection; the container (or exec)
goes on. The monitor's stream is then drained in the background rather than closed,
since closing it would close the process's stdin (``StdinOnce``, and an exec's stdin).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from berth.client.streams import DetachMatcher
from berth.engine.execs import parse_detach_keys

RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
STDIN, STDOUT, STDERR = 0, 1, 2
# Monitor streams left open after a detach (drained until the process ends).
_DRAINING: set[asyncio.Task[None]] = set()


def frame(stream: int, data: bytes) -> bytes:
    """One frame of the multiplexed stream: [stream, 0, 0, 0, size u32 BE] + data."""
    return struct.pack(">BxxxL", stream, len(data)) + data


class _HalfCloseProtocol(asyncio.StreamReaderProtocol):
    def eof_received(self) -> bool:
        super().eof_received()
        return True  # keep the transport open: output still flows to the client


class Hijacked:
    """The client's raw connection after the upgrade."""

    def __init__(
        self,
        response: web.StreamResponse,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.response = response
        self.reader = reader
        self.writer = writer

    @property
    def closed(self) -> bool:
        return self.writer.transport.is_closing()

    async def write(self, data: bytes) -> bool:
        """False once the client is gone."""
        if self.closed:
            return False
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    def close(self) -> None:
        self.writer.close()


async def hijack(request: web.Request, content_type: str) -> Hijacked:
    await request.read()  # any request body comes before the raw stream
    response = web.StreamResponse(
        status=101,
        reason="UPGRADED",
        headers={"Content-Type": content_type, "Connection": "Upgrade", "Upgrade": "tcp"},
    )
    response.force_close()
    await response.prepare(request)
    transport = request.transport
    assert transport is not None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    protocol = _HalfCloseProtocol(reader)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    transport.resume_reading()
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return Hijacked(response, reader, writer)


def drain_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep a detached monitor stream open, reading and dropping its output, until the
    monitor ends it (the process exited); then close it."""

    async def drain() -> None:
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    task = asyncio.create_task(drain())
    _DRAINING.add(task)
    task.add_done_callback(_DRAINING.discard)


def framed(stream: int) -> Callable[[bytes], bytes]:
    """Output of a TTY process sent to a client that expects frames (docker-py starts
    an exec made with a TTY with ``Tty: false``)."""
    return lambda data: frame(stream, data)


class Deframer:
    """Frames from the monitor sent raw to a client that asked for a TTY's stream."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def __call__(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        while len(self.buffer) >= 8:
            size = int.from_bytes(self.buffer[4:8], "big")
            if len(self.buffer) < 8 + size:
                break
            out += self.buffer[8 : 8 + size]
            del self.buffer[: 8 + size]
        return bytes(out)


async def splice(
    client: Hijacked,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    detach_keys: bytes | None = None,
    transform: Callable[[bytes], bytes] | None = None,
) -> bool:
    """Copy the monitor's stream (``reader``) to the client until it ends, and the
    client's input to the monitor (``writer``), passing the client's half-close on.
    With ``detach_keys``, the sequence on the client's input ends the splice: True is
    returned and ``writer`` must then stay open (see :func:`drain_later`). Closes
    neither the client nor ``writer``."""
    detached = asyncio.Event()
    matcher = DetachMatcher(detach_keys) if detach_keys else None

    async def upstream() -> None:
        try:
            while data := await client.reader.read(65536):
                if matcher is not None:
                    data, hit = matcher.feed(data)
                    if data:
                        writer.write(data)
                        await writer.drain()
                    if hit:
                        detached.set()
                        return
                    continue
                writer.write(data)
                await writer.drain()
            if matcher is not None and matcher.pos:  # a partial sequence, then EOF
                writer.write(matcher.keys[: matcher.pos])
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    async def downstream() -> None:
        try:
            while data := await reader.read(65536):
                if transform is not None:
                    data = transform(data)
                    if not data:
                        continue
                if not await client.write(data):
                    break
        except (ConnectionError, OSError):
            pass

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    stop = asyncio.create_task(detached.wait())
    try:
        await asyncio.wait({down, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down, stop):
            task.cancel()
        await asyncio.gather(up, down, stop, return_exceptions=True)
    return detached.is_set()


async def run_hijacked(
    client: Hijacked,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    detach_keys: bytes | None = None,
    transform: Callable[[bytes], bytes] | None = None,
) -> bool:
    """:func:`splice`, then close the client and release the monitor stream (closed,
    or drained in the background after a detach). True if the client detached."""
    detached = False
    try:
        detached = await splice(
            client, reader, writer, detach_keys=detach_keys, transform=transform
        )
    finally:
        client.close()
        if detached:
            drain_later(reader, writer)
        else:
            writer.close()
    return detached


# ---- attach (POST /containers/{id}/attach, GET /containers/{id}/attach/ws) -----------------


def _qbool(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


async def _replay_logs(
    request: web.Request, container_id: str, send: Callable[[str, bytes], Awaitable[bool]]
) -> None:
    """The container's log so far (``logs=1``), stdout/stderr as asked."""
    from berth.api.server import services

    want = {"stdout": _qbool(request, "stdout"), "stderr": _qbool(request, "stderr")}
    async for stream, text, _stamp in services(request).containers.logs(container_id):
        if want.get(stream) and not await send(stream, text.encode()):
            return


async def attach(request: web.Request) -> web.StreamResponse:
    """Attach: ``logs`` replays the log first, ``stream`` follows the live output (and
    passes stdin on), ``detachKeys`` overrides ctrl-p,ctrl-q."""
    from berth.api.server import services

    service = services(request).containers
    container = service.get(request.match_info["id"])
    stdin = _qbool(request, "stdin")
    keys = parse_detach_keys(request.query.get("detachKeys"))
    logs, stream = _qbool(request, "logs"), _qbool(request, "stream")
    tty = container.spec.tty
    m_reader = m_writer = None
    if stream:
        container, m_reader, m_writer = await service.attach(
            container.id,
            stdin=stdin,
            stdout=_qbool(request, "stdout"),
            stderr=_qbool(request, "stderr"),
        )
    try:
        client = await hijack(request, RAW_STREAM if tty else MULTIPLEXED_STREAM)
    except BaseException:
        if m_writer is not None:
            m_writer.close()
        raise
    service.publish(container, "attach")
    if logs:

        async def send(name: str, data: bytes) -> bool:
            return await client.write(
                data if tty else frame(STDOUT if name == "stdout" else STDERR, data)
            )

        try:
            await _replay_logs(request, container.id, send)
        except BaseException:
            if m_writer is not None:
                m_writer.close()
            client.close()
            raise
    if m_reader is None or m_writer is None:
        client.close()
        return client.response
    await run_hijacked(client, m_reader, m_writer, detach_keys=keys if stdin else None)
    return client.response


async def attach_ws(request: web.Request) -> web.StreamResponse:
    """Attach over a websocket: output as binary messages (raw, not framed), messages
    from the client to stdin."""
    from berth.api.server import services

    service = services(request).containers
    container = service.get(request.match_info["id"])
    stdin = _qbool(request, "stdin")
    m_reader = m_writer = None
    if _qbool(request, "stream"):
        container, m_reader, m_writer = await service.attach(
            container.id,
            stdin=stdin,
            stdout=_qbool(request, "stdout"),
            stderr=_qbool(request, "stderr"),
        )
    ws = web.WebSocketResponse()
    try:
        await ws.prepare(request)
        if _qbool(request, "logs"):

            async def send(_name: str, data: bytes) -> bool:
                await ws.send_bytes(data)
                return True

            await _replay_logs(request, container.id, send)
        if m_reader is None or m_writer is None:
            return ws
        deframe = None if container.spec.tty else Deframer()
        reader, writer = m_reader, m_writer

        async def upstream() -> None:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    writer.write(message.data)
                elif message.type == WSMsgType.TEXT:
                    writer.write(message.data.encode())
                else:
                    break
                await writer.drain()

        up = asyncio.create_task(upstream())
        try:
            while data := await reader.read(65536):
                if deframe is not None:
                    data = deframe(data)
                if data:
                    await ws.send_bytes(data)
        except (ConnectionError, OSError):
            pass
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
    finally:
        if m_writer is not None:
            m_writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await ws.close()
    return ws

"""Connection hijacking for attach and exec, and Docker's stream framing.

The docker CLI needs ``101 UPGRADED`` (a 200 breaks it). After the status line the
socket is taken from aiohttp: its transport moves to a ``StreamReaderProtocol`` whose
``eof_received`` keeps the socket open for writing, so a client that half-closes
(stdin at EOF) still receives the container's output.
"""

from __future__ import annotations

import asyncio
import struct

from aiohttp import web

RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
STDIN, STDOUT, STDERR = 0, 1, 2


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


async def splice(
    client: Hijacked, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy the monitor's stream (``reader``) to the client until it ends, and the
    client's input to the monitor (``writer``), passing the client's half-close on.
    Closes neither the client nor ``writer``."""

    async def upstream() -> None:
        try:
            while data := await client.reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    up = asyncio.create_task(upstream())
    try:
        while data := await reader.read(65536):
            if not await client.write(data):
                break
    except (ConnectionError, OSError):
        pass
    finally:
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)
